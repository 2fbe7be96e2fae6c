//! Couplings as a trait: the built-ins the configuration names, a coupling defined here
//! plugging into the trainer (training, checkpoints, resume), and the checks on what a coupling
//! hands back. Also the flow registry and the flow check on resume.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;
use common::weights;
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::{
    AnchorConfig, AnchorLaw, AnchorPolicy, AnchorStorage, AnchorStore, Coupling,
    OptimalTransportSubspace, StepBatch, StoreSpec,
};
use integration_flow::data::{Dataset, Toy};
use integration_flow::flow::{FlowConfig, Parameterization, ProbabilityFlow, VeConfig};
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{Mlp, MlpConfig};
use integration_flow::train::{CheckpointInfo, TrainConfig, Trainer};
use integration_flow::Error;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn model(flow: Arc<dyn ProbabilityFlow>) -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
    let net = MlpConfig {
        width: 32,
        depth: 2,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap();
    IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Zero,
    }
    .init(flow, net)
    .unwrap()
}

fn rf() -> Arc<dyn ProbabilityFlow> {
    FlowConfig::Rf(Default::default()).init().unwrap()
}

fn quiet(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 64,
        progress: false,
        ..Default::default()
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("couplings", name)
}

#[test]
fn the_configuration_names_every_built_in() {
    let expected = [
        (
            AnchorPolicy::Prediction,
            0,
            "prediction",
            true,
            AnchorLaw::Gaussian { scale: 2.0 },
        ),
        (
            AnchorPolicy::Data,
            0,
            "data",
            true,
            AnchorLaw::Gaussian { scale: 2.0 },
        ),
        (
            AnchorPolicy::Frozen,
            0,
            "frozen",
            true,
            AnchorLaw::Gaussian { scale: 2.0 },
        ),
        (
            AnchorPolicy::Ot,
            0,
            "ot",
            false,
            AnchorLaw::Gaussian { scale: 2.0 },
        ),
        (AnchorPolicy::Off, 0, "off", false, AnchorLaw::Zero),
    ];
    let data = Toy::Moons.sample(128, 0).unwrap();
    for (policy, subspace, name, anchor_term, law) in expected {
        let config = AnchorConfig {
            policy,
            subspace,
            scale: 2.0,
            ..Default::default()
        };
        let coupling = config.coupling();
        assert_eq!(coupling.name(), name);
        assert_eq!(coupling.uses_anchor_term(), anchor_term, "{name}");
        assert_eq!(coupling.law(&data).unwrap(), law, "{name}");
    }
    let subspace = AnchorConfig {
        subspace: 1,
        ot_refresh_epochs: 3,
        ..Default::default()
    }
    .coupling();
    assert_eq!(subspace.name(), "ot_subspace");
    assert!(matches!(
        subspace.law(&data).unwrap(),
        AnchorLaw::Subspace { .. }
    ));
    assert!(!subspace.rebuilds_at(2) && subspace.rebuilds_at(3) && subspace.rebuilds_at(6));
    // A subspace coupling handed another law says so instead of drawing wrong anchors.
    let spec = StoreSpec {
        storage: AnchorStorage::F32,
        backing: &Default::default(),
    };
    let coupling = OptimalTransportSubspace {
        dims: 1,
        chunk: 64,
        refresh_epochs: 0,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let gaussian = AnchorLaw::Gaussian { scale: 1.0 };
    assert!(matches!(
        coupling.build(&data, &gaussian, spec, &mut rng),
        Err(Error::InvalidArgument { .. })
    ));
}

/// Anchors are the examples mirrored through the origin; after every step the anchors of the
/// batch move halfway to the examples. Counts its updates.
#[derive(Debug, Default)]
struct Mirror {
    updates: AtomicUsize,
}

impl Coupling for Mirror {
    fn name(&self) -> &str {
        "mirror"
    }
    fn law(&self, _data: &Dataset) -> integration_flow::Result<AnchorLaw> {
        Ok(AnchorLaw::Gaussian { scale: 0.5 })
    }
    fn build(
        &self,
        data: &Dataset,
        _law: &AnchorLaw,
        spec: StoreSpec<'_>,
        _rng: &mut dyn Rng,
    ) -> integration_flow::Result<Option<AnchorStore>> {
        let mirrored: Vec<f32> = data.values().iter().map(|v| -v).collect();
        let mut store = AnchorStore::zeros(data.len(), data.dim(), spec.storage, spec.backing)?;
        let all: Vec<usize> = (0..data.len()).collect();
        store.set(&all, &mirrored)?;
        Ok(Some(store))
    }
    fn uses_anchor_term(&self) -> bool {
        true
    }
    fn update(&self, batch: &StepBatch<'_>) -> integration_flow::Result<Option<Vec<f32>>> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        let halfway = batch
            .anchors
            .iter()
            .zip(batch.examples)
            .map(|(a, x)| 0.5 * (a + x))
            .collect();
        Ok(Some(halfway))
    }
}

#[test]
fn a_coupling_of_ones_own_trains_checkpoints_and_resumes() {
    let data = Toy::Moons.sample(256, 0).unwrap();
    let mirror = Arc::new(Mirror::default());
    let mut trainer =
        Trainer::with_coupling(model(rf()), data.clone(), quiet(8), mirror.clone()).unwrap();
    assert_eq!(trainer.coupling().name(), "mirror");
    // The store is what the coupling built; the model samples from the coupling's law.
    let all: Vec<usize> = (0..data.len()).collect();
    let first = trainer.anchors().unwrap().get(&all).unwrap();
    assert_eq!(first, data.values().iter().map(|v| -v).collect::<Vec<_>>());
    assert_eq!(
        trainer.model().anchor_law(),
        AnchorLaw::Gaussian { scale: 0.5 }
    );
    let stats = trainer.train_step().unwrap();
    // An anchor term: w = 1/(e + 1) = 1 in epoch 0; the update ran once and moved the batch.
    assert_eq!(stats.w, 1.0);
    assert_eq!(mirror.updates.load(Ordering::SeqCst), 1);
    let moved = trainer.anchors().unwrap().get(&all).unwrap();
    let changed = moved.iter().zip(&first).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 64 * 2, "one batch of 64 two-value anchors moved");

    let dir = scratch("mirror");
    let mut straight =
        Trainer::with_coupling(model(rf()), data.clone(), quiet(8), mirror.clone()).unwrap();
    straight.fit().unwrap();
    let mut first_half =
        Trainer::with_coupling(model(rf()), data.clone(), quiet(8), mirror.clone())
            .unwrap()
            .with_checkpoint_dir(&dir);
    first_half.train_steps(3).unwrap();
    assert_eq!(CheckpointInfo::read(&dir).unwrap().coupling, "mirror");
    // The checkpoint is of another coupling than the configuration names: plain resume refuses.
    match Trainer::resume(&dir, model(rf()), data.clone()) {
        Err(Error::Checkpoint { reason, .. }) => assert!(reason.contains("coupling"), "{reason}"),
        Err(other) => panic!("expected a checkpoint error, got {other}"),
        Ok(_) => panic!("a run of the mirror coupling resumed with policy ot"),
    }
    let mut resumed =
        Trainer::resume_with_coupling(&dir, model(rf()), data.clone(), mirror.clone()).unwrap();
    resumed.fit().unwrap();
    assert_eq!(resumed.step(), 8);
    assert!(straight.anchors() == resumed.anchors(), "anchors differ");
    assert!(weights(straight.model().net()) == weights(resumed.model().net()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A coupling that builds a store of the wrong size.
#[derive(Debug)]
struct TooFew;

impl Coupling for TooFew {
    fn name(&self) -> &str {
        "too_few"
    }
    fn law(&self, _data: &Dataset) -> integration_flow::Result<AnchorLaw> {
        Ok(AnchorLaw::Gaussian { scale: 1.0 })
    }
    fn build(
        &self,
        data: &Dataset,
        _law: &AnchorLaw,
        spec: StoreSpec<'_>,
        _rng: &mut dyn Rng,
    ) -> integration_flow::Result<Option<AnchorStore>> {
        AnchorStore::zeros(data.len() - 1, data.dim(), spec.storage, spec.backing).map(Some)
    }
    fn uses_anchor_term(&self) -> bool {
        false
    }
    fn update(&self, _batch: &StepBatch<'_>) -> integration_flow::Result<Option<Vec<f32>>> {
        Ok(Some(vec![0.0; 3])) // never reached
    }
}

#[test]
fn a_store_of_the_wrong_size_is_an_error() {
    let data = Toy::Moons.sample(128, 0).unwrap();
    assert!(matches!(
        Trainer::with_coupling(model(rf()), data, quiet(2), Arc::new(TooFew)),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn the_flow_registry_parses_builds_and_round_trips() {
    for config in FlowConfig::defaults() {
        let flow = config.init().unwrap();
        assert_eq!(flow.name(), config.name());
        assert_eq!(flow.flow_config().as_ref(), Some(&config));
        let back: FlowConfig = config.to_string().parse().unwrap();
        assert_eq!(back, config, "{config}");
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(FlowConfig::from_json(&json).unwrap(), config);
        assert_eq!(config.name().parse::<FlowConfig>().unwrap(), config);
    }
    let ve: FlowConfig = "ve:sigma_max=20, sigma_min=0.01".parse().unwrap();
    assert_eq!(
        ve,
        FlowConfig::Ve(VeConfig {
            sigma_min: 0.01,
            sigma_max: 20.0
        })
    );
    assert_eq!(
        " ve : sigma_max=20 ".parse::<FlowConfig>().unwrap().name(),
        "ve"
    );
    for bad in [
        "ode",
        "ve:sigma_max",
        "ve:sigma_max=big",
        "ve:beta=1",
        "ve:sigma_max=-1",
        r#"rf:kind="ve""#,
        "ve:sigma_max=1,sigma_max=2",
    ] {
        assert!(bad.parse::<FlowConfig>().is_err(), "{bad} parsed");
    }
    let e = FlowConfig::from_json(r#"{"kind": "vp", "beta_mx": 3}"#).unwrap_err();
    assert!(e.to_string().contains("beta_mx"), "{e}");
}

#[test]
fn resume_refuses_another_configuration_of_the_same_flow_naming_the_field() {
    let data = Toy::Moons.sample(256, 0).unwrap();
    let dir = scratch("ve");
    let ve = |sigma_max: f64| {
        FlowConfig::Ve(VeConfig {
            sigma_max,
            ..Default::default()
        })
        .init()
        .unwrap()
    };
    let mut t = Trainer::new(model(ve(80.0)), data.clone(), quiet(2))
        .unwrap()
        .with_checkpoint_dir(&dir);
    t.fit().unwrap();
    let info = CheckpointInfo::read(&dir).unwrap();
    assert_eq!(info.flow_config, ve(80.0).flow_config());
    match Trainer::resume(&dir, model(ve(20.0)), data.clone()) {
        Err(Error::Checkpoint { reason, .. }) => {
            assert!(reason.contains("sigma_max"), "{reason}");
            assert!(reason.contains("80") && reason.contains("20"), "{reason}");
        }
        Err(other) => panic!("expected a checkpoint error, got {other}"),
        Ok(_) => panic!("a VE run with σ_max 80 resumed with σ_max 20"),
    }
    assert!(Trainer::resume(&dir, model(ve(80.0)), data).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Builds a right store first and, at its rebuild after the first epoch, one anchor short.
#[derive(Debug, Default)]
struct ShrinksOnRebuild {
    builds: AtomicUsize,
}

impl Coupling for ShrinksOnRebuild {
    fn name(&self) -> &str {
        "shrinks"
    }
    fn law(&self, _data: &Dataset) -> integration_flow::Result<AnchorLaw> {
        Ok(AnchorLaw::Gaussian { scale: 1.0 })
    }
    fn build(
        &self,
        data: &Dataset,
        _law: &AnchorLaw,
        spec: StoreSpec<'_>,
        _rng: &mut dyn Rng,
    ) -> integration_flow::Result<Option<AnchorStore>> {
        let short = self.builds.fetch_add(1, Ordering::SeqCst);
        AnchorStore::zeros(
            data.len() - short.min(1),
            data.dim(),
            spec.storage,
            spec.backing,
        )
        .map(Some)
    }
    fn uses_anchor_term(&self) -> bool {
        false
    }
    fn rebuilds_at(&self, _epoch: usize) -> bool {
        true
    }
}

#[test]
fn a_rebuilt_store_of_the_wrong_size_is_an_error_not_a_panic() {
    let data = Toy::Moons.sample(128, 0).unwrap();
    let coupling = Arc::new(ShrinksOnRebuild::default());
    let mut trainer = Trainer::with_coupling(model(rf()), data, quiet(4), coupling).unwrap();
    trainer.train_step().unwrap(); // batch 1 of 2
    match trainer.train_step() {
        Err(Error::ShapeMismatch { .. }) => {}
        other => panic!("expected a shape mismatch at the rebuild, got {other:?}"),
    }
}
