//! Helpers shared by the integration tests.
#![allow(dead_code)]

use integration_flow::flow::{FlowConfig, ProbabilityFlow};
use std::sync::Arc;

/// The four families with their default configurations, from the crate's registry.
pub fn default_flows() -> Vec<Arc<dyn ProbabilityFlow>> {
    FlowConfig::defaults()
        .iter()
        .map(|config| config.init().unwrap())
        .collect()
}

/// Evenly spaced times strictly inside `[min, max]`.
pub fn interior(flow: &dyn ProbabilityFlow, n: usize) -> Vec<f64> {
    let r = flow.time_range();
    (1..=n)
        .map(|k| r.min + r.len() * k as f64 / (n + 1) as f64)
        .collect()
}

/// Every parameter value of a module, in visiting order (ids differ between runs, values must
/// not).
pub fn weights<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(m: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            self.0.extend(p.val().into_data().iter::<f32>());
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

/// A rectified-flow model around an MLP of `width` units × `depth` layers (integral form,
/// σ_data = 1, no anchors), on the CPU training backend.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub fn rf_mlp(
    width: usize,
    depth: usize,
) -> integration_flow::model::IntegrationFlow<
    integration_flow::backend::CpuAutodiff,
    integration_flow::nn::Mlp<integration_flow::backend::CpuAutodiff>,
> {
    rf_mlp_of(integration_flow::nn::MlpConfig::default().dim, width, depth)
}

/// [`rf_mlp`] for data of `dim` values per example.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub fn rf_mlp_of(
    dim: usize,
    width: usize,
    depth: usize,
) -> integration_flow::model::IntegrationFlow<
    integration_flow::backend::CpuAutodiff,
    integration_flow::nn::Mlp<integration_flow::backend::CpuAutodiff>,
> {
    let net = integration_flow::nn::MlpConfig {
        dim,
        width,
        depth,
        ..Default::default()
    }
    .init(&Default::default(), 0)
    .expect("a valid MLP");
    integration_flow::model::IntegrationFlowConfig {
        parameterization: integration_flow::flow::Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: integration_flow::coupling::AnchorLaw::Zero,
    }
    .init(FlowConfig::Rf(Default::default()).init().expect("rf"), net)
    .expect("a valid model")
}

/// An empty scratch folder `integration_flow_{test}_{name}_{pid}` in the temp directory.
pub fn scratch(test: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_{test}_{name}_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Sliced W2 between 4,096 one-step samples of a 2-D `model` and `data`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub fn one_step_sw2<N: integration_flow::nn::IntegrationNet<integration_flow::backend::Cpu>>(
    model: &integration_flow::model::IntegrationFlow<integration_flow::backend::Cpu, N>,
    data: &integration_flow::data::Dataset,
) -> f64 {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let samples: Vec<f32> = model
        .generate(&mut rng, 4096, 1)
        .expect("one-step samples")
        .into_data()
        .to_vec()
        .expect("float samples");
    integration_flow::metrics::sliced_wasserstein2(&samples, data.values(), 2, 128, 3)
        .expect("sliced W2")
}

/// Asserts that the student of the pipeline run in `dir` (an `rf_mlp(64, 3)` teacher in
/// `dir/teacher`) has less than half its teacher's one-step sliced W2 to `data`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub fn assert_student_halves_teachers_sw2(
    dir: &std::path::Path,
    student: &integration_flow::train::Trainer<
        integration_flow::backend::CpuAutodiff,
        integration_flow::nn::Mlp<integration_flow::backend::CpuAutodiff>,
    >,
    data: &integration_flow::data::Dataset,
) {
    let teacher =
        integration_flow::train::Trainer::resume(dir.join("teacher"), rf_mlp(64, 3), data.clone())
            .expect("the teacher's checkpoint");
    let (before, after) = (
        one_step_sw2(&teacher.ema_model(), data),
        one_step_sw2(&student.ema_model(), data),
    );
    assert!(
        after < 0.5 * before,
        "one-step SW2 {after:.4} after, {before:.4} before"
    );
}

/// The example binary `name` that `cargo test` builds beside the tests
/// (`target/<profile>/examples/<name>`).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|p| p.join("examples").join(name))
        .expect("the test runs from target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: run the whole suite (`cargo test`), which builds the examples",
        bin.display()
    );
    bin
}

/// The largest `|a[i] − b[i]|` (the slices must have one length).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
