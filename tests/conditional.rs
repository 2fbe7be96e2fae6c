//! Class-conditional models: labelled data, the networks' class input, the model's class
//! requests and classifier-free guidance, training with label dropout, and couplings within
//! each class.
#![cfg(any(feature = "flex", feature = "ndarray"))]

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::{AnchorLaw, AnchorPolicy, AnchorStorage, AnchorStore, OtSpace};
use integration_flow::data::{Dataset, Toy};
use integration_flow::flow::FlowConfig;
use integration_flow::metrics::{nearest_labels, ClassAgreement};
use integration_flow::model::{Classes, IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{ClassInput, IntegrationNet, Mlp, MlpConfig, UNetConfig};
use integration_flow::sample::{ode_pairs, one_step, solve_ode, solve_ode_from, OdeSolver};
use integration_flow::train::{FlowMapConfig, ObjectiveConfig, TrainConfig, Trainer};
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
    // Both inputs, added in either order, give the layout the configuration builds: the
    // configuration's network (target time first) and one converted the other way, loaded
    // with the same non-zero weights, give the same outputs for the same gap and classes.
    let both = MlpConfig {
        width: 32,
        depth: 2,
        target_time: true,
        classes: Some(ClassInput::new(3)),
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap()
    .map(&mut Perturb(StdRng::seed_from_u64(1)));
    let converted = again.with_target_time().unwrap();
    assert_eq!(converted.num_params(), both.num_params());
    let converted = converted.load_record(both.clone().into_record());
    let gap = Tensor::<Cpu, 1>::from_floats([0.0, 0.2, 0.4, 0.6, 0.8], &device);
    let classes = Tensor::<Cpu, 2>::from_floats(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0, 0.0],
        ],
        &device,
    );
    let call = |net: &Mlp<Cpu>| {
        values(net.forward_classes(
            x.clone(),
            c.clone(),
            Some(gap.clone()),
            classes.clone(),
            x.clone(),
        ))
    };
    assert_eq!(call(&converted), call(&both));
    // The class and the gap inputs both matter (neither is ignored).
    let no_gap =
        values(both.forward_classes(x.clone(), c.clone(), None, classes.clone(), x.clone()));
    assert!(max_difference(&no_gap, &call(&both)) > 1e-4);

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

#[test]
fn guidance_is_counted_in_the_nfe_and_pairs_carry_their_classes() {
    // Zero anchors, so that a pair's ODE solve depends on its latent and class only.
    let model = trained_looking_conditional(true).with_anchor_law(AnchorLaw::Zero);
    let mut rng = StdRng::seed_from_u64(3);
    let plain = model.clone().with_classes(Classes::All(1)).unwrap();
    let guided = plain.clone().with_guidance(2.0).unwrap();
    let heun = OdeSolver::Heun { steps: 3 };
    let calls = solve_ode(&plain, &mut rng, 4, heun).unwrap().nfe;
    assert_eq!(
        solve_ode(&guided, &mut rng, 4, heun).unwrap().nfe,
        2 * calls
    );
    assert_eq!(one_step(&guided, &mut rng, 4).unwrap().nfe, 2);
    assert_eq!(one_step(&plain, &mut rng, 4).unwrap().nfe, 1);

    // Pairs made at per-row classes carry them; "no class" pairs carry none.
    let labels = [2, 0, 1, 1, 0];
    let asked = model.clone().with_classes(Classes::each(labels)).unwrap();
    let pairs = ode_pairs(&asked, &mut rng, 5, heun, 2, |_, _| {}).unwrap();
    assert_eq!(pairs.samples.labels(), Some(&labels[..]));
    assert_eq!(pairs.samples.classes(), 3);
    // Each pair is its latent's ODE solution at its own class (batches of 2: the labels are
    // sliced per batch).
    for (i, &label) in labels.iter().enumerate() {
        let latent = Tensor::<Cpu, 2>::from_data(
            burn::tensor::TensorData::new(pairs.latents.row(i).to_vec(), [1, 2]),
            &Default::default(),
        );
        let at_class = model.clone().with_classes(Classes::All(label)).unwrap();
        let solved = solve_ode_from(&at_class, latent.clone(), latent.zeros_like(), heun).unwrap();
        let solved = values(solved.samples);
        assert!(
            max_difference(&solved, pairs.samples.row(i)) < 1e-4,
            "pair {i}: {solved:?} against {:?}",
            pairs.samples.row(i)
        );
    }
    let free = ode_pairs(&model, &mut rng, 5, heun, 2, |_, _| {}).unwrap();
    assert_eq!(free.samples.labels(), None);
    // A per-row request of another count than the pairs is an error.
    assert!(matches!(
        ode_pairs(&asked, &mut rng, 4, heun, 2, |_, _| {}),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn a_conditional_model_exports_and_loads_with_its_class_input() {
    let device = Default::default();
    let data = Toy::Moons.sample_labelled(512, 0).unwrap();
    let net = MlpConfig {
        width: 32,
        depth: 2,
        classes: Some(ClassInput::new(2)),
        ..Default::default()
    }
    .init::<CpuAutodiff>(&device, 0)
    .unwrap();
    let model = IntegrationFlowConfig::default()
        .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
        .unwrap();
    let config = TrainConfig {
        steps: 20,
        batch_size: 128,
        progress: false,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, data, config).unwrap();
    trainer.fit().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_conditional_export_{}",
        std::process::id()
    ));
    trainer
        .export(&dir, integration_flow::saved::Precision::F32)
        .unwrap();
    let loaded = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&dir, &device).unwrap();
    assert_eq!(loaded.net().class_input(), Some(ClassInput::new(2)));
    let sample = |m: IntegrationFlow<Cpu, Mlp<Cpu>>| {
        values(
            m.with_classes(Classes::each([0, 1, 1, 0]))
                .unwrap()
                .generate(&mut StdRng::seed_from_u64(4), 4, 1)
                .unwrap(),
        )
    };
    assert_eq!(sample(loaded.clone()), sample(trainer.ema_model()));
    assert!(loaded.with_classes(Classes::All(2)).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two overlapping classes on the line (first coordinate `∓0.5 + N(0, 1)`, second `N(0, 1)`):
/// classifier-free guidance samples `p(x|c)^w·p(x)^(1−w)`, which for w > 1 pushes each class
/// away from the other, so the classes' means move apart.
fn overlapping_classes(n: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % 2;
        let centre = if class == 0 { -0.5 } else { 0.5 };
        let [a, b]: [f32; 2] =
            [0, 1].map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng));
        values.extend([centre + a, b]);
        labels.push(class);
    }
    Dataset::new(values, 2)
        .unwrap()
        .with_labels(labels, 2)
        .unwrap()
}

/// The distance between the mean first coordinates of the samples asked for class 1 and
/// class 0.
fn class_separation(samples: &[f32], requested: &[usize]) -> f64 {
    let mean = |k: usize| {
        let xs: Vec<f64> = samples
            .chunks(2)
            .zip(requested)
            .filter(|(_, &r)| r == k)
            .map(|(p, _)| f64::from(p[0]))
            .collect();
        xs.iter().sum::<f64>() / xs.len() as f64
    };
    mean(1) - mean(0)
}

/// Guidance pushes the classes apart, whether applied at sampling to the ODE (two evaluations
/// a step) or trained into a flow map's one call.
#[test]
fn guidance_separates_the_classes_in_the_ode_and_in_one_flow_map_call() {
    let device = Default::default();
    let data = overlapping_classes(4096, 2);
    let net = MlpConfig {
        width: 64,
        depth: 3,
        embedding: integration_flow::nn::NoiseEmbedding::sinusoidal(
            integration_flow::nn::NoiseEmbedding::SMOOTH_SCALE,
        ),
        classes: Some(ClassInput::new(2)),
        ..Default::default()
    };
    let model = |net| {
        IntegrationFlowConfig {
            sigma_data: Some(1.0),
            ..Default::default()
        }
        .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
        .unwrap()
    };
    let config = |steps: usize, lr: f64, objective: ObjectiveConfig| {
        let mut config = TrainConfig {
            steps,
            batch_size: 256,
            progress: false,
            label_dropout: 0.2,
            objective,
            ..Default::default()
        };
        config.optimizer.lr = lr;
        config.anchor.policy = AnchorPolicy::Off;
        config
    };
    let mut teacher = Trainer::new(
        model(net.init::<CpuAutodiff>(&device, 0).unwrap()),
        data.clone(),
        config(800, 2e-3, ObjectiveConfig::Regression),
    )
    .unwrap();
    teacher.fit().unwrap();
    let n = 2000;
    let requested: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let ask = |m: IntegrationFlow<Cpu, Mlp<Cpu>>, w: f64| {
        m.with_classes(Classes::each(requested.iter().copied()))
            .unwrap()
            .with_guidance(w)
            .unwrap()
    };
    let ode = |w: f64| {
        let generated = solve_ode(
            &ask(teacher.ema_model(), w),
            &mut StdRng::seed_from_u64(6),
            n,
            OdeSolver::Heun { steps: 16 },
        )
        .unwrap();
        class_separation(&values(generated.samples), &requested)
    };
    let (ode_plain, ode_guided) = (ode(1.0), ode(3.0));
    let student = |w: f64| {
        let net = teacher
            .ema_as_trainable(net.init::<CpuAutodiff>(&device, 0).unwrap())
            .unwrap()
            .with_target_time()
            .unwrap();
        let objective = ObjectiveConfig::FlowMap(FlowMapConfig {
            guidance: w,
            ..Default::default()
        });
        let mut trainer =
            Trainer::new(model(net), data.clone(), config(600, 5e-4, objective)).unwrap();
        trainer.fit().unwrap();
        let generated = one_step(
            &ask(trainer.ema_model(), 1.0),
            &mut StdRng::seed_from_u64(6),
            n,
        )
        .unwrap();
        assert_eq!(generated.nfe, 1);
        class_separation(&values(generated.samples), &requested)
    };
    let (one_plain, one_guided) = (student(1.0), student(3.0));
    eprintln!(
        "class 1's mean minus class 0's: data 1.0; ODE {ode_plain:.3} → guided {ode_guided:.3}; \
         flow map one call {one_plain:.3} → guided {one_guided:.3}"
    );
    assert!((ode_plain - 1.0).abs() < 0.25, "unguided ODE {ode_plain}");
    assert!(
        ode_guided > 1.3 * ode_plain,
        "{ode_guided} against {ode_plain}"
    );
    assert!(
        one_guided > 1.3 * one_plain,
        "{one_guided} against {one_plain}"
    );
}

#[test]
fn flow_map_training_on_labels_runs_every_target_and_checks_its_guidance() {
    let device = Default::default();
    let data = Toy::Moons.sample_labelled(512, 0).unwrap();
    let model = |classes: Option<ClassInput>| {
        let net = MlpConfig {
            width: 16,
            depth: 1,
            target_time: true,
            classes,
            ..Default::default()
        }
        .init::<CpuAutodiff>(&device, 0)
        .unwrap();
        IntegrationFlowConfig::default()
            .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
            .unwrap()
    };
    let config = |one_step_target, guidance: f64, label_dropout: f64| {
        let mut config = TrainConfig {
            steps: 4,
            batch_size: 128,
            progress: false,
            label_dropout,
            objective: ObjectiveConfig::FlowMap(FlowMapConfig {
                one_step_target,
                guidance,
                data_share: 0.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        config.anchor.policy = AnchorPolicy::Off;
        config
    };
    use integration_flow::train::OneStepTarget::{Derivative, TwoJumps};
    // Every one-step target, guided or not, on labelled rows (some of them dropped).
    for (target, w) in [
        (Derivative, 1.0),
        (TwoJumps, 1.0),
        (Derivative, 2.0),
        (TwoJumps, 2.0),
    ] {
        let mut trainer = Trainer::new(
            model(Some(ClassInput::new(2))),
            data.clone(),
            config(target, w, 0.1),
        )
        .unwrap();
        trainer.fit().unwrap();
        assert_eq!(trainer.step(), 4);
    }
    // Guidance without classes, or without the "no class" estimate, is refused up front.
    assert!(Trainer::new(
        model(None),
        data.clone().without_labels(),
        config(Derivative, 2.0, 0.1)
    )
    .is_err());
    assert!(Trainer::new(
        model(Some(ClassInput::new(2))),
        data.clone(),
        config(Derivative, 2.0, 0.0)
    )
    .is_err());
    // A model that samples with guidance does not train: its estimates would be guided mixes.
    let guided = model(Some(ClassInput::new(2))).with_guidance(2.0).unwrap();
    assert!(matches!(
        Trainer::new(guided, data, config(Derivative, 1.0, 0.1)),
        Err(Error::InvalidArgument { name: "model", .. })
    ));
}
