//! The `generate` example keeps its contract: from the released MNIST weights (its default) and
//! from an exported 2-D model it writes `samples.npy` and `samples.png` and prints
//! `count=<n> seconds=<s>` last. Runs the example binary that `cargo test` builds beside the
//! tests (`target/<profile>/examples/generate`).
#![cfg(all(feature = "eval", any(feature = "flex", feature = "ndarray")))]

mod common;
use integration_flow::data::{read_npy, NpyData};
use integration_flow::prelude::*;
use integration_flow::saved::Precision;
use std::path::{Path, PathBuf};
use std::process::Command;

fn generate() -> PathBuf {
    common::example_binary("generate")
}

/// Runs the example with `args`; returns its samples `[n, dim]` and its last line.
fn run(args: &[&str], out: &Path) -> (Vec<f32>, Vec<usize>, String) {
    let output = Command::new(generate())
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(out.join("samples.png").is_file());
    let npy = read_npy(out.join("samples.npy")).unwrap();
    let NpyData::F32(values) = npy.data else {
        panic!("samples are not float32")
    };
    (values, npy.shape, last)
}

#[test]
fn the_released_weights_make_digits() {
    let out = common::scratch("generate", "released");
    let (values, shape, last) = run(&["--count", "64", "--steps", "2"], &out);
    assert_eq!(shape, vec![64, 784]);
    assert!(last.starts_with("count=64 seconds="), "{last}");
    // Digits, not noise: most pixels are near the background or the stroke.
    let saturated = values.iter().filter(|v| v.abs() > 0.8).count();
    assert!(
        saturated * 10 > values.len() * 7,
        "{saturated} of {}",
        values.len()
    );
}

#[test]
fn an_exported_2d_model_makes_a_scatter_and_bad_flags_fail() {
    let device = Default::default();
    let net = MlpConfig {
        width: 16,
        depth: 1,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap();
    let model = IntegrationFlowConfig {
        sigma_data: Some(1.0),
        ..Default::default()
    }
    .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
    .unwrap();
    let dir = common::scratch("generate", "model");
    model.export(&dir, Precision::F32).unwrap();
    let out = common::scratch("generate", "out");
    let dir_arg = dir.to_str().unwrap();
    let (values, shape, last) = run(&["--model", dir_arg, "--count", "300", "--seed", "3"], &out);
    assert_eq!(shape, vec![300, 2]);
    assert_eq!(last.split(' ').next(), Some("count=300"));
    // The same seed through the library gives the same samples.
    let expected: Vec<f32> = model
        .generate(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3),
            300,
            1,
        )
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(values, expected);
    for bad in [
        vec!["--model", dir_arg, "--steps", "0"],
        vec!["--model", dir_arg, "--sampler", "nope", "--steps", "2"],
        vec!["--model", "/nonexistent/model"],
    ] {
        let status = Command::new(generate())
            .args(&bad)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!status.status.success(), "{bad:?}");
    }
}
