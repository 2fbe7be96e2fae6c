//! The consistency objective: a trained denoiser fine-tuned to agree with its own estimate
//! closer to the data on the same path generates in one call, where the denoiser's one call
//! returns the blurred mean.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;

use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::AnchorPolicy;
use integration_flow::data::{Dataset, Toy};
use integration_flow::model::IntegrationFlow;
use integration_flow::nn::{Mlp, MlpConfig};
use integration_flow::train::{ConsistencyConfig, ObjectiveConfig, TrainConfig, Trainer};

fn config(steps: usize, lr: f64, objective: ObjectiveConfig) -> TrainConfig {
    let mut config = TrainConfig {
        steps,
        batch_size: 256,
        progress: false,
        objective,
        ..Default::default()
    };
    config.optimizer.lr = lr;
    config.anchor.policy = AnchorPolicy::Off;
    config
}

/// The denoiser's weights, fine-tuned `steps` more with `objective`.
fn fine_tune(
    teacher: &Trainer<CpuAutodiff, Mlp<CpuAutodiff>>,
    data: &Dataset,
    objective: ObjectiveConfig,
    steps: usize,
) -> IntegrationFlow<Cpu, Mlp<Cpu>> {
    let template = MlpConfig {
        width: 64,
        depth: 3,
        ..Default::default()
    }
    .init(&Default::default(), 9)
    .unwrap();
    let net = teacher.ema_as_trainable(template).unwrap();
    let model = common::rf_mlp(64, 3).with_net(net);
    let mut student = Trainer::new(model, data.clone(), config(steps, 5e-4, objective)).unwrap();
    student.fit().unwrap();
    student.ema_model()
}

#[test]
fn consistency_tuning_turns_a_denoiser_into_a_one_step_generator() {
    let data = Toy::Moons.sample(4096, 1).unwrap();
    let mut teacher = Trainer::new(
        common::rf_mlp(64, 3),
        data.clone(),
        config(800, 2e-3, ObjectiveConfig::Regression),
    )
    .unwrap();
    teacher.fit().unwrap();
    let blurred = common::one_step_sw2(&teacher.ema_model(), &data);
    let consistency = ObjectiveConfig::Consistency(ConsistencyConfig {
        stage_steps: 100,
        ..Default::default()
    });
    let tuned = common::one_step_sw2(&fine_tune(&teacher, &data, consistency, 600), &data);
    // The control: as many more steps of the denoiser's own objective.
    let more = common::one_step_sw2(
        &fine_tune(&teacher, &data, ObjectiveConfig::Regression, 600),
        &data,
    );
    eprintln!("one-step SW2: denoiser {blurred:.4}, +600 regression {more:.4}, +600 consistency {tuned:.4}");
    assert!(
        tuned < 0.5 * more.min(blurred),
        "one-step SW2 after consistency tuning {tuned:.4}, the denoiser's {blurred:.4}, after as \
         many regression steps {more:.4}"
    );
}

#[test]
fn the_objective_loads_from_json_and_names_a_bad_field() {
    let config = TrainConfig::from_json(
        r#"{"objective": {"kind": "consistency", "stage_steps": 50, "target": "ema"}}"#,
    )
    .unwrap();
    match config.objective {
        ObjectiveConfig::Consistency(c) => assert_eq!(c.stage_steps, 50),
        other => panic!("read {other:?}"),
    }
    for (json, field) in [
        (r#"{"objective": {"kind": "consistency", "q": 1.0}}"#, "q"),
        (
            r#"{"objective": {"kind": "consistency", "stage_steps": 0}}"#,
            "stage_steps",
        ),
        (r#"{"objective": {"kind": "consistency", "k": -1.0}}"#, "k"),
    ] {
        let err = TrainConfig::from_json(json).unwrap_err();
        assert!(err.to_string().contains(field), "{json}: {err}");
    }
}

#[test]
fn the_pipeline_tunes_by_consistency_without_a_pairs_stage() {
    use integration_flow::pipeline::{DistillConfig, DistillMethod, Distillation, Stage};
    let data = Toy::Moons.sample(4096, 2).unwrap();
    let dir = common::scratch("consistency", "pipeline");
    let recipe = DistillConfig {
        method: DistillMethod::Consistency(ConsistencyConfig::default()),
        student_steps: 300,
        student_t_max_fraction: Some(0.0),
        student_lr: 5e-4,
        ..Default::default()
    };
    let teacher = config(600, 2e-3, ObjectiveConfig::Regression);
    let run = || {
        Distillation::new(
            &dir,
            common::rf_mlp(64, 3),
            data.clone(),
            teacher.clone(),
            recipe.clone(),
        )
        .unwrap()
    };
    // Both stages end by their step counts long before this budget.
    let budget = std::time::Duration::from_secs(3600);
    let mut first = run();
    assert!(first.run_stage(budget).unwrap().is_none());
    let state = first.state().unwrap().unwrap();
    assert_eq!(
        state.stage,
        Stage::Student,
        "no pairs stage after the teacher"
    );
    let student = first.run_for(budget).unwrap();
    assert_eq!(student.step(), 300);
    assert!(matches!(
        student.config().objective,
        ObjectiveConfig::Consistency(_)
    ));
    let state = first.state().unwrap().unwrap();
    assert_eq!((state.stage, state.seconds[1]), (Stage::Done, 0.0));
    assert!(!dir.join("pairs_latents.npy").exists());
    // A new run object on the finished folder returns the same student.
    let again = run().run_for(budget).unwrap();
    assert_eq!(
        common::weights(&again.ema_model().into_net()),
        common::weights(&student.ema_model().into_net())
    );
    common::assert_student_halves_teachers_sw2(&dir, &student, &data);
    let _ = std::fs::remove_dir_all(&dir);
}
