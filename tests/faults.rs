//! Fault injection: training runs in a child process (this test binary run again, in the
//! `fault_child` test) that is killed with SIGKILL at random moments and while it writes a
//! checkpoint, or that hits a file-size limit (a full disk) while checkpointing; and checkpoint
//! files are truncated and bit-flipped. Nothing may be lost or loaded wrongly: the last complete
//! checkpoint always resumes, and the finished run equals an uninterrupted one bit for bit.
#![cfg(all(
    target_os = "linux",
    target_env = "gnu",
    any(feature = "flex", feature = "ndarray")
))]

mod common;
use common::weights;
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::Toy;
use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{Mlp, MlpConfig};
use integration_flow::train::{
    checkpoint_path, AnchorBacking, AnchorPolicy, AnchorStorage, CheckpointInfo,
    DataParallelConfig, TrainConfig, Trainer, CHECKPOINT_FILE,
};
use integration_flow::Error;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

type T = Trainer<CpuAutodiff, Mlp<CpuAutodiff>>;

const STEPS: usize = 40;

fn model() -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
    let net = MlpConfig {
        width: 128,
        depth: 3,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap();
    IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(
        Arc::new(RectifiedFlowConfig::default().init().unwrap()),
        net,
    )
    .unwrap()
}

fn data() -> integration_flow::data::Dataset {
    Toy::Checkerboard.sample(1024, 0).unwrap()
}

/// Checkpoints every step, so that a random kill often lands inside a checkpoint write; policy
/// `prediction` changes every anchor it trains on, so lost anchor updates would show.
/// With `workers` > 1 the run is data-parallel (the `data-parallel` feature).
fn config(dir: &Path, file_backed: bool, workers: usize) -> TrainConfig {
    let mut config = TrainConfig {
        steps: STEPS,
        batch_size: 128,
        checkpoint_every: 1,
        progress: false,
        data_parallel: (workers > 1).then(|| DataParallelConfig {
            workers,
            ..Default::default()
        }),
        ..Default::default()
    };
    config.anchor.policy = AnchorPolicy::Prediction;
    if file_backed {
        config.anchor.backing = AnchorBacking::File {
            path: dir.join("anchors.bin"),
        };
    }
    config
}

/// For the Ctrl-C test: checkpoints only at the end, so the one written on interruption is
/// the only one there is.
fn sigint_config() -> TrainConfig {
    let mut config = TrainConfig {
        steps: 200,
        batch_size: 128,
        checkpoint_every: 0,
        progress: false,
        ..Default::default()
    };
    config.anchor.policy = AnchorPolicy::Prediction;
    config
}

/// Resumes from `dir`'s checkpoint if there is one, else starts; checkpoints into `dir`.
fn open(dir: &Path, file_backed: bool, workers: usize) -> T {
    let trainer = if checkpoint_path(dir).exists() {
        Trainer::resume(dir, model(), data()).unwrap()
    } else {
        Trainer::new(model(), data(), config(dir, file_backed, workers)).unwrap()
    };
    trainer.with_checkpoint_dir(dir)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_faults_{name}_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The child's side: what `IF_FAULT_MODE` asks for, in `IF_FAULT_DIR`. Without those
/// variables (a plain `cargo test -- --ignored`) it does nothing.
#[test]
#[ignore = "run by the fault-injection tests as their child process"]
fn fault_child() {
    let (Ok(mode), Ok(dir)) = (
        std::env::var("IF_FAULT_MODE"),
        std::env::var("IF_FAULT_DIR"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    match mode.as_str() {
        "train" => {
            let file_backed = std::env::var("IF_FAULT_FILE_BACKED").is_ok();
            let workers = std::env::var("IF_FAULT_WORKERS").map_or(1, |w| w.parse().unwrap());
            open(&dir, file_backed, workers).fit().unwrap();
        }
        "fsize" => {
            let limit: u64 = std::env::var("IF_FAULT_LIMIT").unwrap().parse().unwrap();
            // SAFETY: setrlimit and signal with valid arguments, before any file is written;
            // ignoring SIGXFSZ makes an oversized write fail with EFBIG instead of killing.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rl = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &rl), 0);
            }
            let mut trainer = open(&dir, false, 1);
            trainer.train_step().unwrap();
            match trainer.checkpoint() {
                Err(Error::Io { path, source }) => {
                    println!("FSIZE_IO_ERROR {} ({source})", path.display())
                }
                other => panic!("expected an I/O error, got {other:?}"),
            }
        }
        "sigint" => {
            integration_flow::train::interrupt::install().unwrap();
            let mut trainer = Trainer::new(model(), data(), sigint_config())
                .unwrap()
                .with_checkpoint_dir(&dir);
            std::fs::write(dir.join("ready"), b"").unwrap();
            match trainer.fit() {
                Err(Error::Interrupted {
                    step,
                    checkpoint: Some(at),
                }) => {
                    assert_eq!(at, dir);
                    println!("INTERRUPTED {step}");
                }
                Ok(_) => println!("FINISHED"),
                Err(other) => panic!("expected an interruption, got {other}"),
            }
        }
        other => panic!("unknown IF_FAULT_MODE {other}"),
    }
}

fn spawn(mode: &str, dir: &Path, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "fault_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("IF_FAULT_MODE", mode)
    .env("IF_FAULT_DIR", dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// The final state of a run: weights, EMA and anchors.
fn state(t: &T) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let anchors = t.anchors().unwrap();
    let all: Vec<usize> = (0..anchors.len()).collect();
    (
        weights(t.model().net()),
        weights(t.ema_model().net()),
        anchors.get(&all).unwrap(),
    )
}

/// ≥ 20 kills at random moments and 10 while a checkpoint is being written (the temporary
/// file exists); after each the checkpoint left behind resumes, and the resumed run finishes
/// with the same weights, EMA and anchors as an uninterrupted child run.
#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let mid_write = kill_9_trials("", 1, 20, 10);
    assert!(
        mid_write >= 5,
        "too few kills landed inside a checkpoint write: {mid_write}"
    );
}

/// The same for a data-parallel run (two worker threads): 6 kills at random moments and 3
/// while writing; the resumed runs repeat the uninterrupted one to the bit.
#[cfg(feature = "data-parallel")]
#[test]
fn kill_9_during_a_data_parallel_run_loses_nothing() {
    kill_9_trials("parallel_", 2, 6, 3);
}

/// `random` kills at random moments, then `writing` kills while a checkpoint is written, of
/// child runs with `workers`; returns how many kills left a temporary file.
fn kill_9_trials(name: &str, workers: usize, random: u64, writing: u64) -> usize {
    let reference_dir = scratch(&format!("{name}reference"));
    let started = Instant::now();
    let workers_env = ("IF_FAULT_WORKERS", workers.to_string());
    let out = spawn("train", &reference_dir, std::slice::from_ref(&workers_env))
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = started.elapsed();
    let reference = Trainer::resume(&reference_dir, model(), data()).unwrap();
    assert_eq!(reference.step(), STEPS);
    let expected = state(&reference);
    println!(
        "uninterrupted child run ({workers} workers): {:.2} s",
        full.as_secs_f64()
    );

    let (mut mid_write, mut fresh) = (0, 0);
    for trial in 0..random + writing {
        let seed = 1000 + trial;
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = scratch(&format!("{name}trial{trial}"));
        let file_backed = trial % 3 == 2;
        let mut envs: Vec<(&str, String)> = vec![workers_env.clone()];
        if file_backed {
            envs.push(("IF_FAULT_FILE_BACKED", "1".into()));
        }
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let mut child = spawn("train", &dir, &envs);
        let during_write = trial >= random;
        if during_write {
            // Kill as soon as a temporary checkpoint file appears, after a random number of
            // checkpoints.
            let wanted = rng.random_range(1..STEPS / 2);
            let mut seen = 0;
            let mut was_there = false;
            let deadline = Instant::now() + full * 3;
            while Instant::now() < deadline {
                let there = tmp.exists();
                if there && !was_there {
                    seen += 1;
                    if seen >= wanted {
                        break;
                    }
                }
                was_there = there;
                std::thread::sleep(Duration::from_micros(50));
            }
        } else {
            let at = full.mul_f64(rng.random_range(0.0..1.0));
            std::thread::sleep(at);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if tmp.exists() {
            mid_write += 1;
        }
        let had_checkpoint = checkpoint_path(&dir).exists();
        fresh += usize::from(!had_checkpoint);
        let mut trainer = open(&dir, file_backed, workers);
        let resumed_at = trainer.step();
        trainer.fit().unwrap();
        println!(
            "trial {trial} (seed {seed}{}): killed{}, resumed at step {resumed_at}",
            if file_backed {
                ", file-backed anchors"
            } else {
                ""
            },
            if tmp.exists() || during_write {
                " while writing"
            } else {
                ""
            },
        );
        assert_eq!(trainer.step(), STEPS);
        let got = state(&trainer);
        assert!(
            got.0 == expected.0,
            "trial {trial} (seed {seed}): weights differ"
        );
        assert!(
            got.1 == expected.1,
            "trial {trial} (seed {seed}): EMA differs"
        );
        assert!(
            got.2 == expected.2,
            "trial {trial} (seed {seed}): anchors differ"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "{} kills: {mid_write} left a temporary file (killed while writing), {fresh} before the \
         first checkpoint",
        random + writing
    );
    let _ = std::fs::remove_dir_all(&reference_dir);
    mid_write
}

/// A file-size limit (a full disk) while checkpointing: a typed I/O error naming the file, the
/// previous checkpoint untouched, no temporary file left behind.
/// Ctrl-C (SIGINT) at random moments of a child's run: the child finishes its step, writes a
/// checkpoint at that step and returns `Error::Interrupted`; resuming finishes the run with the
/// same weights, EMA and anchors as an uninterrupted one.
#[test]
fn ctrl_c_checkpoints_and_the_run_resumes_exactly() {
    let mut straight = Trainer::new(model(), data(), sigint_config()).unwrap();
    let started = Instant::now();
    straight.fit().unwrap();
    let training = started.elapsed();
    let expected = state(&straight);
    let mut interrupted = 0;
    for trial in 0..6u64 {
        let seed = 2000 + trial;
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = scratch(&format!("sigint{trial}"));
        let child = spawn("sigint", &dir, &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("ready").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(training.mul_f64(rng.random_range(0.05..0.8)));
        // SAFETY: kill with a valid signal to our own child process.
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
            0
        );
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() == Some(130) {
            // The signal came while no training loop ran (just before or after `fit`): the
            // process ended at once; whatever checkpoint is there is a complete one.
            println!("trial {trial} (seed {seed}): outside the loop, exited with 130");
            let mut resumed = if checkpoint_path(&dir).exists() {
                Trainer::resume(&dir, model(), data()).unwrap()
            } else {
                Trainer::new(model(), data(), sigint_config()).unwrap()
            };
            resumed.fit().unwrap();
            assert!(
                state(&resumed) == expected,
                "trial {trial} (seed {seed}): run differs"
            );
            continue;
        }
        assert!(
            out.status.success(),
            "trial {trial} (seed {seed}): {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = CheckpointInfo::read(&dir).unwrap();
        // The harness prints its own text on the same line.
        if let Some(at) = stdout.find("INTERRUPTED ") {
            let rest = &stdout[at + "INTERRUPTED ".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let step: usize = digits.parse().unwrap();
            assert_eq!(
                info.step, step,
                "trial {trial}: checkpoint is not at the step reported"
            );
            assert!(step < info.config.steps);
            interrupted += 1;
            println!("trial {trial} (seed {seed}): interrupted after step {step}");
        } else {
            assert!(stdout.contains("FINISHED"), "trial {trial}: {stdout}");
            println!("trial {trial} (seed {seed}): finished before the signal");
        }
        let mut resumed = Trainer::resume(&dir, model(), data()).unwrap();
        resumed.fit().unwrap();
        let got = state(&resumed);
        assert!(
            got == expected,
            "trial {trial} (seed {seed}): resumed run differs"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of 6 signals landed during training"
    );
}

#[test]
fn a_full_disk_keeps_the_previous_checkpoint() {
    let dir = scratch("fsize");
    let mut trainer = open(&dir, false, 1);
    trainer.train_steps(2).unwrap();
    trainer.checkpoint().unwrap();
    let before = std::fs::read(checkpoint_path(&dir)).unwrap();
    let limit = (before.len() / 2).to_string();
    let out = spawn("fsize", &dir, &[("IF_FAULT_LIMIT", limit)])
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("FSIZE_IO_ERROR"),
        "child: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(CHECKPOINT_FILE),
        "the error names the file: {stdout}"
    );
    assert_eq!(std::fs::read(checkpoint_path(&dir)).unwrap(), before);
    assert!(!dir.join(format!("{CHECKPOINT_FILE}.tmp")).exists());
    assert_eq!(Trainer::resume(&dir, model(), data()).unwrap().step(), 2);
}

/// A checkpoint directory that cannot be created (a file is in the way) is a typed error.
#[test]
fn an_unwritable_checkpoint_directory_is_an_error() {
    let dir = scratch("unwritable");
    let blocker = dir.join("not_a_dir");
    std::fs::write(&blocker, b"x").unwrap();
    let mut trainer = Trainer::new(model(), data(), config(&dir, false, 1))
        .unwrap()
        .with_checkpoint_dir(&blocker);
    match trainer.train_steps(1).and_then(|_| trainer.checkpoint()) {
        Err(Error::Io { .. }) => {}
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x");
}

/// Every truncation tried and 300 random single-bit flips are refused with
/// `Error::Checkpoint` naming the file; nothing is loaded.
#[test]
fn truncated_or_bit_flipped_checkpoints_are_refused() {
    let dir = scratch("corrupt");
    let mut trainer = open(&dir, false, 1);
    trainer.train_steps(1).unwrap();
    trainer.checkpoint().unwrap();
    let path = checkpoint_path(&dir);
    let good = std::fs::read(&path).unwrap();
    let info = CheckpointInfo::parse(&good, &path).unwrap();
    assert_eq!((info.step, info.data_shape), (1, [1024, 2]));
    assert_eq!(info.anchors, Some((1024, 2, AnchorStorage::F32)));
    let check = |bytes: &[u8], what: &str| {
        match CheckpointInfo::parse(bytes, &path) {
            Err(Error::Checkpoint { path: p, .. }) => assert_eq!(p, path, "{what}"),
            other => panic!("{what}: CheckpointInfo::parse gave {other:?}"),
        }
        std::fs::write(&path, bytes).unwrap();
        match Trainer::resume(&dir, model(), data()) {
            Err(Error::Checkpoint { path: p, .. }) => assert_eq!(p, path, "{what}"),
            Err(other) => panic!("{what}: expected Error::Checkpoint, got {other}"),
            Ok(_) => panic!("{what}: a corrupt checkpoint was loaded"),
        }
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut lengths: Vec<usize> = (0..64).collect();
    lengths.extend((0..100).map(|_| rng.random_range(0..good.len())));
    lengths.push(good.len() - 1);
    for len in lengths {
        check(&good[..len], &format!("truncated to {len} bytes"));
    }
    for _ in 0..300 {
        let at = rng.random_range(0..good.len());
        let bit = rng.random_range(0..8);
        let mut bad = good.clone();
        bad[at] ^= 1 << bit;
        check(&bad, &format!("bit {bit} of byte {at} flipped"));
    }
    let mut longer = good.clone();
    longer.push(0);
    check(&longer, "one byte appended");
    std::fs::write(&path, &good).unwrap();
    assert!(Trainer::resume(&dir, model(), data()).is_ok());
}

/// Writes a small valid checkpoint to `$IF_CHECKPOINT_SEED` (a directory): the seed of the
/// checkpoint fuzz target's corpus (docs/reliability.md).
#[test]
#[ignore = "writes the fuzzing seed when asked"]
fn write_checkpoint_seed() {
    let Ok(dir) = std::env::var("IF_CHECKPOINT_SEED") else {
        return;
    };
    let net = MlpConfig {
        width: 4,
        depth: 1,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap();
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(
        Arc::new(RectifiedFlowConfig::default().init().unwrap()),
        net,
    )
    .unwrap();
    let mut config = config(Path::new(&dir), false, 1);
    config.batch_size = 4;
    config.steps = 1;
    let data = Toy::Checkerboard.sample(8, 0).unwrap();
    let mut trainer = Trainer::new(model, data, config).unwrap();
    trainer.fit().unwrap();
    trainer.save_checkpoint(&dir).unwrap();
}
