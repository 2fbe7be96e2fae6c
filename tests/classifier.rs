//! The crate's own MNIST classifier and the Fréchet distance on its features.
#![cfg(any(feature = "flex", feature = "ndarray"))]

use burn::tensor::{Tensor, TensorData};
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::data::{mnist, Images};
use integration_flow::metrics::{Classifier, ClassifierConfig};
use integration_flow::train::{perceptual_distance, ImageFeatures};
use integration_flow::Error;

#[test]
fn the_mnist_classifier_reaches_97_percent_and_scores_real_against_noise() {
    let digits = mnist::load(None).unwrap();
    let dir = std::env::temp_dir().join("integration_flow_classifier_test");
    let _ = std::fs::remove_dir_all(&dir);
    let config = ClassifierConfig::default();
    let started = std::time::Instant::now();
    let classifier = Classifier::<Cpu>::load_or_train::<CpuAutodiff>(
        &dir,
        &digits,
        &config,
        &Default::default(),
    )
    .unwrap();
    let trained_in = started.elapsed();
    println!(
        "test accuracy {:.4} on {} held-out images, trained in {:.1?}",
        classifier.test_accuracy(),
        config.held_out,
        trained_in
    );
    assert!(
        classifier.test_accuracy() >= 0.97,
        "{}",
        classifier.test_accuracy()
    );

    // The cache is used the second time: same accuracy, much faster.
    let started = std::time::Instant::now();
    let cached = Classifier::<Cpu>::load_or_train::<CpuAutodiff>(
        &dir,
        &digits,
        &config,
        &Default::default(),
    )
    .unwrap();
    assert!(started.elapsed() < trained_in / 4);
    assert_eq!(cached.test_accuracy(), classifier.test_accuracy());

    // Two halves of the real data are close; real against noise or against one class is far.
    let values = digits.dataset().values();
    let half = values.len() / 2;
    let real = classifier.score(&values[..half], &values[half..]).unwrap();
    let noise: Vec<f32> = (0..half)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0).clamp(-1.0, 1.0))
        .collect();
    let far = classifier.score(&noise, &values[half..]).unwrap();
    let labels = digits.labels().unwrap();
    let ones: Vec<f32> = (0..digits.len())
        .filter(|&i| labels[i] == 1)
        .flat_map(|i| digits.dataset().row(i).to_vec())
        .collect();
    let collapsed = classifier.score(&ones, &values[half..]).unwrap();
    println!(
        "fd real/real {:.3}, one class {:.3}, noise {:.3}",
        real.fd, collapsed.fd, far.fd
    );
    assert!(real.fd * 5.0 < collapsed.fd && collapsed.fd < far.fd);
    // Mode coverage: the real half has every class; the ones have one.
    assert!(
        real.class_histogram.iter().all(|&c| c > 300),
        "{:?}",
        real.class_histogram
    );
    let dominant = *collapsed.class_histogram.iter().max().unwrap();
    assert!(dominant as f64 > 0.95 * (ones.len() / 784) as f64);

    // As a perceptual network: its three convolutions, an image at distance 0 from itself and
    // further from another digit than from a slightly shifted copy of itself.
    let frozen = cached.frozen();
    assert_eq!(ImageFeatures::<Cpu>::image_shape(&frozen), [1, 28, 28]);
    let row = |i: usize| digits.dataset().row(i).to_vec();
    let mut shifted = vec![-1.0f32; 784];
    shifted[1..].copy_from_slice(&row(0)[..783]);
    let rows = |v: Vec<Vec<f32>>| {
        let n = v.len();
        Tensor::<Cpu, 2>::from_data(TensorData::new(v.concat(), [n, 784]), &Default::default())
    };
    let other = (1..digits.len()).find(|&i| labels[i] != labels[0]).unwrap();
    let d = perceptual_distance(
        &frozen,
        rows(vec![row(0), row(0), row(0)]),
        rows(vec![row(0), shifted, row(other)]),
    )
    .unwrap()
    .into_data()
    .to_vec::<f32>()
    .unwrap();
    println!(
        "perceptual distance: self {}, shifted {}, other digit {}",
        d[0], d[1], d[2]
    );
    assert!(d[0].abs() < 1e-5 && d[1] > 0.0 && d[2] > d[1], "{d:?}");

    // Bad input: wrong length, NaN, unlabelled training data.
    assert!(matches!(
        classifier.score(&values[..100], &values[..784 * 2]),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut nan = values[..784 * 2].to_vec();
    nan[5] = f32::NAN;
    assert!(matches!(
        classifier.score(&nan, &values[..784 * 2]),
        Err(Error::NonFinite { .. })
    ));
    let unlabelled = Images::new(values[..784 * 10].to_vec(), [1, 28, 28], None).unwrap();
    assert!(
        Classifier::<Cpu>::train::<CpuAutodiff>(&unlabelled, &config, &Default::default()).is_err()
    );
    // A corrupt cache is an error that names the file, not a panic.
    std::fs::write(dir.join("weights.mpk"), b"garbage").unwrap();
    match Classifier::<Cpu>::load(&dir, &Default::default()) {
        Err(Error::Format { path, .. }) => assert_eq!(path, dir.join("weights.mpk")),
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }
}
