//! Class-conditional models: labelled data, the networks' class input, the model's class
//! requests and classifier-free guidance, training with label dropout, and couplings within
//! each class.
#![cfg(any(feature = "flex", feature = "ndarray"))]

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::{AnchorStorage, AnchorStore, OtSpace};
use integration_flow::data::{Dataset, Toy};
use integration_flow::flow::FlowConfig;
use integration_flow::metrics::{nearest_labels, ClassAgreement};
use integration_flow::model::{Classes, IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{ClassInput, IntegrationNet, Mlp, MlpConfig, UNetConfig};
use integration_flow::train::{TrainConfig, Trainer};
use integration_flow::Error;
use rand::{rngs::StdRng, SeedableRng};

fn values<B: burn::tensor::backend::Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn rf_model<N: IntegrationNet<Cpu>>(net: N) -> IntegrationFlow<Cpu, N> {
    IntegrationFlowConfig {
        sigma_data: Some(1.0),
        ..Default::default()
    }
    .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
    .unwrap()
}

fn small_mlp(classes: Option<ClassInput>, seed: u64) -> Mlp<Cpu> {
    MlpConfig {
        width: 32,
        depth: 2,
        classes,
        ..Default::default()
    }
    .init::<Cpu>(&Default::default(), seed)
    .unwrap()
}

#[test]
fn labels_are_checked_against_the_examples() {
    let data = Dataset::new(vec![0.0; 6], 2).unwrap();
    assert!(matches!(
        data.clone().with_labels(vec![0, 1], 2),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        data.clone().with_labels(vec![0, 1, 3], 3),
        Err(Error::InvalidArgument { name: "labels", .. })
    ));
    assert!(data.clone().with_labels(vec![0, 0, 0], 0).is_err());
    let labelled = data.clone().with_labels(vec![0, 2, 1], 3).unwrap();
    assert_eq!(labelled.classes(), 3);
    // Labels on one split only, or another number of classes, are errors.
    assert!(labelled.check_same_labelling(&data).is_err());
    assert!(data.check_same_labelling(&labelled).is_err());
    let other = data.clone().with_labels(vec![0, 0, 1], 2).unwrap();
    assert!(labelled.check_same_labelling(&other).is_err());
    assert!(labelled.check_same_labelling(&labelled).is_ok());
}

#[test]
fn toy_labels_follow_the_points() {
    let data = Toy::EightGaussians.sample_labelled(2000, 3).unwrap();
    assert_eq!(data.classes(), 8);
    let labels = data.labels().unwrap();
    // Each Gaussian's points lie around its centre (radius 4/1.414 ≈ 2.83, std 0.35): the
    // mean of a class is far from the origin, and every class is drawn.
    for k in 0..8 {
        let rows: Vec<&[f32]> = (0..data.len())
            .filter(|&i| labels[i] == k)
            .map(|i| data.row(i))
            .collect();
        assert!(rows.len() > 150, "class {k}: {} points", rows.len());
        let mean = [0, 1].map(|c| rows.iter().map(|r| r[c]).sum::<f32>() / rows.len() as f32);
        let radius = (mean[0] * mean[0] + mean[1] * mean[1]).sqrt();
        assert!((radius - 2.83).abs() < 0.2, "class {k}: radius {radius}");
    }
    let moons = Toy::Moons.sample_labelled(1000, 3).unwrap();
    let labels = moons.labels().unwrap();
    // The upper moon (label 0) is above the lower one on average.
    let mean_y = |k: usize| {
        let ys: Vec<f32> = (0..moons.len())
            .filter(|&i| labels[i] == k)
            .map(|i| moons.row(i)[1])
            .collect();
        ys.iter().sum::<f32>() / ys.len() as f32
    };
    assert!(mean_y(0) > mean_y(1) + 0.5);
}

#[test]
fn a_class_input_added_to_a_trained_network_changes_nothing_until_trained() {
    let device = Default::default();
    let x = Tensor::<Cpu, 2>::random([5, 2], Distribution::Normal(0.0, 1.0), &device);
    let c = Tensor::<Cpu, 1>::from_floats([0.1, 0.5, 0.9, 0.3, 0.7], &device);
    let plain = small_mlp(None, 4);
    let before = values(plain.forward(x.clone(), c.clone(), x.clone()));
    let conditional = plain.with_classes(ClassInput::new(3)).unwrap();
    assert_eq!(conditional.class_input(), Some(ClassInput::new(3)));
    let after = values(conditional.forward(x.clone(), c.clone(), x.clone()));
    assert_eq!(before, after);
    // The same network asked again is returned as it is; another class input is an error.
    let again = conditional.with_classes(ClassInput::new(3)).unwrap();
    assert!(again.clone().with_classes(ClassInput::new(4)).is_err());
    // A flow-map input added after the classes keeps the layout the configuration builds.
    let config = again.network_config().unwrap();
    let flow_map = again.with_target_time().unwrap();
    let rebuilt = match config {
        integration_flow::nn::NetworkConfig::Mlp(mut c) => {
            c.target_time = true;
            c.init::<Cpu>(&device, 0).unwrap()
        }
        other => panic!("an MLP's config, got {other:?}"),
    };
    let dims = |net: &Mlp<Cpu>| integration_flow_weight_count(net);
    assert_eq!(dims(&flow_map), dims(&rebuilt));

    let unet = UNetConfig {
        base_channels: 8,
        channel_mult: vec![1, 2],
        attention_resolutions: vec![],
        heads: 1,
        groups: 4,
        ..Default::default()
    };
    let net = unet.init::<Cpu>(&device, 1).unwrap();
    let images = Tensor::<Cpu, 2>::random([2, 784], Distribution::Normal(0.0, 1.0), &device);
    let c2 = Tensor::<Cpu, 1>::from_floats([0.2, 0.8], &device);
    let before = values(net.forward(images.clone(), c2.clone(), images.clone()));
    let net = net.with_classes(ClassInput::new(10)).unwrap();
    let after = values(net.forward(images.clone(), c2, images));
    assert_eq!(before, after);
    assert_eq!(net.network_config().unwrap().dim(), 784);
}

fn integration_flow_weight_count<M: burn::module::Module<Cpu>>(m: &M) -> usize {
    m.num_params()
}

/// A conditional MLP whose class weights are not zero, so that classes matter.
fn trained_looking_conditional(null_class: bool) -> IntegrationFlow<Cpu, Mlp<Cpu>> {
    let input = ClassInput {
        classes: 3,
        null_class,
    };
    let net = MlpConfig {
        width: 32,
        depth: 2,
        classes: Some(input),
        ..Default::default()
    }
    .init::<Cpu>(&Default::default(), 2)
    .unwrap();
    // Move every weight a little, the class columns' included.
    let net = net.map(&mut Perturb(StdRng::seed_from_u64(9)));
    rf_model(net)
}

struct Perturb(StdRng);

impl burn::module::ModuleMapper<Cpu> for Perturb {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<Cpu, D>>,
    ) -> burn::module::Param<Tensor<Cpu, D>> {
        let (id, tensor, mapper) = param.consume();
        let noise = Tensor::<Cpu, D>::random(
            tensor.dims(),
            Distribution::Normal(0.0, 0.3),
            &tensor.device(),
        );
        let _ = &mut self.0;
        burn::module::Param::from_mapped_value(id, tensor + noise, mapper)
    }
}

#[test]
fn class_requests_are_checked_and_change_the_estimate() {
    let model = trained_looking_conditional(true);
    let device = Default::default();
    let x = Tensor::<Cpu, 2>::random([4, 2], Distribution::Normal(0.0, 1.0), &device);
    let estimate = |m: &IntegrationFlow<Cpu, Mlp<Cpu>>| {
        values(m.estimate(x.clone(), &[1.0], x.clone()).unwrap())
    };
    let zero = estimate(&model.clone().with_classes(Classes::All(0)).unwrap());
    let two = estimate(&model.clone().with_classes(Classes::All(2)).unwrap());
    assert!(max_difference(&zero, &two) > 1e-3, "the class must matter");
    // Per-row labels pick each row's class.
    let mixed = estimate(
        &model
            .clone()
            .with_classes(Classes::each([0, 2, 0, 2]))
            .unwrap(),
    );
    for row in 0..4 {
        let want = if row % 2 == 0 { &zero } else { &two };
        assert_eq!(&mixed[2 * row..2 * row + 2], &want[2 * row..2 * row + 2]);
    }
    // Out of range, the wrong count, a class for an unconditional network: typed errors.
    assert!(matches!(
        model.clone().with_classes(Classes::All(3)),
        Err(Error::InvalidArgument {
            name: "classes",
            ..
        })
    ));
    let three_rows = model
        .clone()
        .with_classes(Classes::each([0, 1, 2]))
        .unwrap();
    assert!(matches!(
        three_rows.estimate(x.clone(), &[1.0], x.clone()),
        Err(Error::ShapeMismatch { .. })
    ));
    let unconditional = rf_model(small_mlp(None, 1));
    assert!(unconditional.clone().with_classes(Classes::All(0)).is_err());
    assert!(unconditional.with_guidance(2.0).is_err());
}

#[test]
fn without_a_no_class_token_unconditional_requests_are_errors() {
    let model = trained_looking_conditional(false);
    let mut rng = StdRng::seed_from_u64(0);
    // The default request is "no class": not a silent unconditional sample.
    assert!(matches!(
        model.generate(&mut rng, 4, 1),
        Err(Error::InvalidArgument {
            name: "classes",
            ..
        })
    ));
    assert!(model.clone().with_classes(Classes::Unconditional).is_err());
    assert!(model
        .clone()
        .with_classes(Classes::Each(vec![Some(0), None]))
        .is_err());
    assert!(model.clone().with_guidance(3.0).is_err());
    let ones = model.with_classes(Classes::All(1)).unwrap();
    assert_eq!(ones.generate(&mut rng, 4, 1).unwrap().dims(), [4, 2]);
}

#[test]
fn guidance_extrapolates_from_the_unconditional_estimate() {
    let model = trained_looking_conditional(true);
    let device = Default::default();
    let x = Tensor::<Cpu, 2>::random([6, 2], Distribution::Normal(0.0, 1.0), &device);
    let t = [0.2, 0.4, 0.6, 0.8, 1.0, 0.5];
    let estimate =
        |m: IntegrationFlow<Cpu, Mlp<Cpu>>| values(m.estimate(x.clone(), &t, x.clone()).unwrap());
    let labels = Classes::each([0, 1, 2, 0, 1, 2]);
    let conditional = estimate(model.clone().with_classes(labels.clone()).unwrap());
    let unconditional = estimate(model.clone());
    let w = 2.5;
    let guided_model = model
        .clone()
        .with_classes(labels)
        .unwrap()
        .with_guidance(w)
        .unwrap();
    assert_eq!(guided_model.evaluations_per_call(), 2);
    let guided = estimate(guided_model);
    for i in 0..guided.len() {
        let want = unconditional[i] + w as f32 * (conditional[i] - unconditional[i]);
        assert!(
            (guided[i] - want).abs() < 1e-4 * (1.0 + want.abs()),
            "value {i}: {} against {want}",
            guided[i]
        );
    }
    assert!(max_difference(&guided, &conditional) > 1e-3);
    assert!(model.clone().with_guidance(f64::NAN).is_err());
    assert!(model.with_guidance(-1.0).is_err());
}

#[test]
fn training_checks_labels_against_the_network() {
    let device = Default::default();
    let flow = || FlowConfig::Rf(Default::default()).init().unwrap();
    let model = |classes: Option<ClassInput>| {
        let net = MlpConfig {
            width: 16,
            depth: 1,
            classes,
            ..Default::default()
        }
        .init::<CpuAutodiff>(&device, 0)
        .unwrap();
        IntegrationFlowConfig::default().init(flow(), net).unwrap()
    };
    let labelled = Toy::Moons.sample_labelled(256, 0).unwrap();
    let config = TrainConfig {
        steps: 2,
        batch_size: 64,
        progress: false,
        ..Default::default()
    };
    let invalid = |r: Result<_, Error>| match r {
        Err(Error::InvalidArgument { name: "data", .. }) => {}
        Err(e) => panic!("expected a data error, got {e}"),
        Ok(_) => panic!("expected a data error"),
    };
    invalid(Trainer::new(model(None), labelled.clone(), config.clone()).map(|_| ()));
    invalid(
        Trainer::new(
            model(Some(ClassInput::new(2))),
            labelled.clone().without_labels(),
            config.clone(),
        )
        .map(|_| ()),
    );
    invalid(
        Trainer::new(
            model(Some(ClassInput::new(3))),
            labelled.clone(),
            config.clone(),
        )
        .map(|_| ()),
    );
    let no_token = ClassInput {
        classes: 2,
        null_class: false,
    };
    assert!(matches!(
        Trainer::new(model(Some(no_token)), labelled.clone(), config.clone()),
        Err(Error::InvalidConfig {
            field: "label_dropout",
            ..
        })
    ));
    assert!(Trainer::new(
        model(Some(no_token)),
        labelled.clone(),
        TrainConfig {
            label_dropout: 0.0,
            ..config.clone()
        }
    )
    .is_ok());
    assert!(Trainer::new(
        model(Some(ClassInput::new(2))),
        labelled,
        TrainConfig {
            label_dropout: 1.0,
            ..config
        }
    )
    .is_err());
}

#[test]
fn optimal_transport_matches_within_each_class() {
    // 1-D data whose labels are unrelated to position: optimal transport in one chunk is
    // monotone within each class, but not across classes.
    let n = 200;
    let mut rng = StdRng::seed_from_u64(1);
    let x: Vec<f32> = (0..n).map(|i| i as f32 / n as f32 * 4.0 - 2.0).collect();
    let labels: Vec<usize> = (0..n)
        .map(|_| usize::from(rand::RngExt::random::<bool>(&mut rng)))
        .collect();
    let data = Dataset::new(x.clone(), 1)
        .unwrap()
        .with_labels(labels.clone(), 2)
        .unwrap();
    let store = AnchorStore::optimal_transport(
        &data,
        1.0,
        n,
        OtSpace::Data,
        AnchorStorage::F32,
        &mut StdRng::seed_from_u64(2),
    )
    .unwrap();
    let all: Vec<usize> = (0..n).collect();
    let anchors = store.get(&all).unwrap();
    for k in 0..2 {
        let rows: Vec<usize> = (0..n).filter(|&i| labels[i] == k).collect();
        for pair in rows.windows(2) {
            assert!(
                anchors[pair[0]] <= anchors[pair[1]],
                "class {k}: rows {pair:?} out of order"
            );
        }
    }
    let globally_sorted = anchors.windows(2).all(|w| w[0] <= w[1]);
    assert!(!globally_sorted, "classes were matched together");
    let unlabelled = AnchorStore::optimal_transport(
        &data.without_labels(),
        1.0,
        n,
        OtSpace::Data,
        AnchorStorage::F32,
        &mut StdRng::seed_from_u64(2),
    )
    .unwrap();
    let plain = unlabelled.get(&all).unwrap();
    assert!(plain.windows(2).all(|w| w[0] <= w[1]));
}

/// The whole path on 8 Gaussians: labels, OT within classes, label dropout, one-step samples
/// of the requested Gaussian, and the "no class" samples spread over all eight.
#[test]
fn a_conditional_model_generates_the_requested_class_in_one_step() {
    let device = Default::default();
    let data = Toy::EightGaussians.sample_labelled(4096, 0).unwrap();
    let (_, sigma_data) = data.mean_and_std();
    let net = MlpConfig {
        width: 128,
        depth: 3,
        classes: Some(ClassInput::new(8)),
        ..Default::default()
    }
    .init::<CpuAutodiff>(&device, 0)
    .unwrap();
    let model = IntegrationFlowConfig {
        sigma_data: Some(sigma_data),
        ..Default::default()
    }
    .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
    .unwrap();
    let config = TrainConfig {
        steps: 3000,
        batch_size: 256,
        progress: false,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, data.clone(), config).unwrap();
    trainer.fit().unwrap();
    let ema = trainer.ema_model();
    let n = 800;
    let requested: Vec<usize> = (0..n).map(|i| i % 8).collect();
    let mut rng = StdRng::seed_from_u64(5);
    let samples = values(
        ema.clone()
            .with_classes(Classes::each(requested.iter().copied()))
            .unwrap()
            .generate(&mut rng, n, 1)
            .unwrap(),
    );
    let reference = Toy::EightGaussians.sample_labelled(4000, 9).unwrap();
    let predicted = nearest_labels(&reference, &samples, 5).unwrap();
    let agreement = ClassAgreement::new(&requested, &predicted, 8).unwrap();
    assert!(
        agreement.overall > 0.95 && agreement.worst().unwrap() > 0.85,
        "{agreement:?}"
    );
    // "No class" samples (the token label dropout trained) cover all eight Gaussians.
    let free = values(ema.generate(&mut rng, n, 1).unwrap());
    let mut counts = [0usize; 8];
    for label in nearest_labels(&reference, &free, 5).unwrap() {
        counts[label] += 1;
    }
    assert!(counts.iter().all(|&c| c > n / 32), "{counts:?}");
}
