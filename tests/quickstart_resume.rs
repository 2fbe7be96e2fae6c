//! The quickstart example killed with SIGKILL mid-run and continued with `--resume` writes the
//! same `samples.npy`, byte for byte, as a run that was never interrupted. Runs the example
//! binary that `cargo test` builds beside the tests (`target/<profile>/examples/quickstart`).
#![cfg(all(unix, any(feature = "flex", feature = "ndarray")))]

mod common;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn quickstart() -> PathBuf {
    common::example_binary("quickstart")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_quickstart_{name}_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const ARGS: [&str; 6] = [
    "--steps",
    "600",
    "--points",
    "1024",
    "--checkpoint-every",
    "100",
];

#[test]
fn a_killed_and_resumed_quickstart_writes_the_same_samples() {
    let bin = quickstart();
    let straight = scratch("straight");
    let out = Command::new(&bin)
        .args(ARGS)
        .arg("--out")
        .arg(&straight)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let resumed = scratch("resumed");
    let mut child = Command::new(&bin)
        .args(ARGS)
        .arg("--out")
        .arg(&resumed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill a little after the second checkpoint was written (its modification time changes).
    let checkpoint = resumed.join("checkpoint.ifc");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut written = 0;
    let mut last = None;
    while Instant::now() < deadline && written < 2 {
        let modified = std::fs::metadata(&checkpoint)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified != last {
            written += 1;
            last = modified;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it was killed");
    assert!(!resumed.join("samples.npy").exists());

    let out = Command::new(&bin)
        .args(ARGS)
        .arg("--out")
        .arg(&resumed)
        .arg("--resume")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming at step"), "{stderr}");
    let a = std::fs::read(straight.join("samples.npy")).unwrap();
    let b = std::fs::read(resumed.join("samples.npy")).unwrap();
    assert!(a == b, "samples.npy differs after kill -9 and --resume");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sw2=") && last.contains("steps=600"),
        "{last}"
    );
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&resumed);
}

#[test]
fn resume_without_a_checkpoint_is_a_clear_error() {
    let dir = scratch("nothing");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(quickstart())
        .args(["--resume", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checkpoint.ifc"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
