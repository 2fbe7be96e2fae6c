//! The distillation pipeline (teacher → generated pairs → one-step student): a run stopped in
//! the middle and resumed stage by stage ends with the same student as an uninterrupted one;
//! a budget too small, a changed recipe and a teacher of other data are typed errors.
//! One test function: the stop request is process-wide.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;
use common::weights;
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::{Dataset, Toy};
use integration_flow::model::IntegrationFlow;
use integration_flow::nn::Mlp;
use integration_flow::pipeline::{DistillConfig, Distillation, Stage};
use integration_flow::train::{interrupt, TrainConfig};
use integration_flow::Error;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn model() -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
    common::rf_mlp(64, 3)
}

fn recipe() -> DistillConfig {
    DistillConfig {
        pairs: 2048,
        pair_steps: 4,
        pair_batch: 512,
        student_steps: 300,
        ..Default::default()
    }
}

fn pipeline(dir: &PathBuf, data: &Dataset) -> Distillation<CpuAutodiff, Mlp<CpuAutodiff>> {
    let teacher = TrainConfig {
        steps: 600,
        batch_size: 256,
        progress: false,
        ..Default::default()
    };
    Distillation::new(dir, model(), data.clone(), teacher, recipe()).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("pipeline", name)
}

#[test]
fn a_stopped_distillation_resumes_to_the_same_student() {
    // Both stages end by their step counts long before this budget, so the runs are equal.
    let budget = Duration::from_secs(3600);
    let data = Toy::EightGaussians.sample(4096, 3).unwrap();
    let whole = scratch("whole");
    let student = pipeline(&whole, &data).run_for(budget).unwrap();
    assert_eq!(student.step(), 300);
    let state = pipeline(&whole, &data).state().unwrap().unwrap();
    assert_eq!(state.stage, Stage::Done);
    assert!(
        state.seconds.iter().all(|&s| s > 0.0),
        "{:?}",
        state.seconds
    );
    assert_eq!(student.ema_model().anchor_law(), AnchorLaw::Zero);
    // Done: running again hands back the same student and trains nothing.
    let again = pipeline(&whole, &data).run_for(budget).unwrap();
    assert_eq!(weights(again.model().net()), weights(student.model().net()));

    // Stopped during the teacher (after some of its steps), then resumed one stage per
    // "process".
    let stopped = scratch("stopped");
    let timer = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        interrupt::request();
    });
    let (mut stops, mut stages) = (0, 0);
    let messages = Arc::new(Mutex::new(Vec::new()));
    let resumed = loop {
        stages += 1;
        let log = messages.clone();
        let run =
            pipeline(&stopped, &data).with_log(move |m| log.lock().unwrap().push(m.to_string()));
        let mut run = run;
        match run.run_stage(budget) {
            Ok(Some(student)) => break student,
            Ok(None) => {}
            Err(Error::Interrupted { .. }) => stops += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(stages < 10, "the pipeline does not finish");
    };
    timer.join().unwrap();
    assert_eq!(stops, 1, "the stop request reached one training loop");
    // The second start of the teacher continued from its checkpoint, not from scratch.
    let messages = messages.lock().unwrap();
    let starts: Vec<&String> = messages
        .iter()
        .filter(|m| m.starts_with("teacher: from"))
        .collect();
    assert_eq!(starts.len(), 2, "{messages:?}");
    assert!(
        starts[0].starts_with("teacher: from step 0,"),
        "{messages:?}"
    );
    assert!(
        !starts[1].starts_with("teacher: from step 0,"),
        "{messages:?}"
    );
    assert_eq!(
        weights(resumed.model().net()),
        weights(student.model().net())
    );

    // A recipe changed mid-run is refused.
    let mut other = recipe();
    other.pairs = 1024;
    let teacher = TrainConfig {
        steps: 600,
        batch_size: 256,
        progress: false,
        ..Default::default()
    };
    let err = Distillation::new(&whole, model(), data.clone(), teacher.clone(), other)
        .unwrap()
        .run_for(budget)
        .err()
        .unwrap();
    assert!(err.to_string().contains("another recipe"), "{err}");

    // A budget too small for the teacher's share and the pairs, before anything trains.
    let small = scratch("small");
    let err = pipeline(&small, &data)
        .run_for(Duration::from_millis(1))
        .err()
        .unwrap();
    assert!(matches!(err, Error::Budget { .. }), "{err}");
    assert!(!small.join("teacher").join("checkpoint.ifc").exists());

    // A teacher trained on other data.
    let moons = Toy::Moons.sample(4096, 3).unwrap();
    let reuse = scratch("reuse");
    let err = Distillation::new(&reuse, model(), moons, teacher, recipe())
        .unwrap()
        .with_teacher(whole.join("teacher"))
        .run_for(budget)
        .err()
        .unwrap();
    assert!(err.to_string().contains("dataset"), "{err}");

    // The reused teacher's folder cannot be the run's own (the student's checkpoint goes there).
    let own = whole.join("teacher");
    let err = pipeline(&own, &data)
        .with_teacher(&own)
        .run_for(budget)
        .err()
        .unwrap();
    assert!(err.to_string().contains("the run's own"), "{err}");
    // "No limit" as a budget does not overflow: the finished run hands back its student.
    let unlimited = pipeline(&whole, &data).run_for(Duration::MAX).unwrap();
    assert_eq!(unlimited.step(), 300);

    for dir in [whole, stopped, small, reuse] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
