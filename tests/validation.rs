//! The input-validation audit (docs/reliability.md): every public function that takes tensors,
//! shapes, counts, paths or configurations rejects what it cannot handle with a typed error,
//! never a panic or a silently wrong result. One test per module; each case names the call.
#![cfg(any(feature = "flex", feature = "ndarray"))]

use burn::tensor::{Tensor, TensorData};
use integration_flow::backend::Cpu;
use integration_flow::coupling::{AnchorLaw, SubspaceLaw};
use integration_flow::data::{parse_idx, parse_npy, write_npy_f32, Dataset, Images, Pca, Toy};
use integration_flow::flow::{
    PfgmPPConfig, RectifiedFlowConfig, TimeDistribution, VeConfig, VpConfig,
};
use integration_flow::metrics::{
    energy_distance, frechet_distance, frechet_from_moments, mmd, nearest_neighbour_distance,
    sliced_wasserstein2, wasserstein2_1d,
};
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::{MlpConfig, UNetConfig};
#[cfg(feature = "eval")]
use integration_flow::plot::{image_grid_png, line_chart_png, scatter_png, Panel, Series};
use integration_flow::sample::ode::ode_time_grid;
use integration_flow::sample::{
    anchor_iteration, clamp, generate_batched, one_step, renoise, solve_ode, OdeSolver,
    RenoiseAnchor, RenoiseSchedule,
};
use integration_flow::train::{
    assignment, AnchorBacking, AnchorStorage, AnchorStore, CheckpointInfo, TrainConfig, Trainer,
};
use integration_flow::Error;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::Arc;

/// Asserts an error (of any typed kind; a panic fails the test by itself).
#[track_caller]
fn rejects<T: std::fmt::Debug>(what: &str, result: integration_flow::Result<T>) -> Error {
    match result {
        Err(e) => {
            assert!(!e.to_string().is_empty(), "{what}: empty message");
            e
        }
        Ok(v) => panic!("{what}: accepted, gave {v:?}"),
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_validation_{name}_{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn data_rejects_bad_input() {
    rejects("Dataset::new, empty", Dataset::new(vec![], 2));
    rejects("Dataset::new, dim 0", Dataset::new(vec![1.0], 0));
    rejects("Dataset::new, ragged", Dataset::new(vec![1.0; 3], 2));
    rejects("Dataset::new, NaN", Dataset::new(vec![1.0, f32::NAN], 2));
    rejects(
        "Dataset::new, inf",
        Dataset::new(vec![1.0, f32::INFINITY], 2),
    );
    rejects("Toy::sample, n = 0", Toy::Moons.sample(0, 0));
    rejects("parse_idx, empty", parse_idx(&[]));
    rejects(
        "parse_idx, truncated",
        parse_idx(&[0, 0, 8, 1, 0, 0, 0, 5, 1]),
    );
    rejects("parse_npy, not npy", parse_npy(b"hello"));
    rejects(
        "Images::new, bad shape",
        Images::new(vec![0.0; 5], [1, 2, 2], None),
    );
    rejects(
        "Images::new, out of range",
        Images::new(vec![3.0; 4], [1, 2, 2], None),
    );
    rejects(
        "Images::parse_cifar10, short",
        Images::parse_cifar10(&[1; 10], "x"),
    );
    let images = Images::new(vec![0.0; 8], [1, 2, 2], None).unwrap();
    rejects("Images::take(0)", images.take(0));
    rejects("Images::split_off(0)", images.split_off(0));
    rejects(
        "Images::from_folder, missing",
        Images::from_folder("/nonexistent/folder"),
    );
    let dir = scratch("data");
    rejects(
        "write_npy_f32, shape mismatch",
        write_npy_f32(dir.join("x.npy"), &[1.0; 3], &[2, 2]),
    );
    let data = Dataset::new(vec![1.0, 2.0, 3.0, 4.0, 5.0, 7.0], 2).unwrap();
    rejects("Pca::fit, k = 0", Pca::fit(&data, 0));
    rejects("Pca::fit, k > dim", Pca::fit(&data, 3));
    let pca = Pca::fit(&data, 1).unwrap();
    rejects("Pca::project, wrong length", pca.project(&[1.0]));
    assert!(pca.component(1).is_none(), "Pca::component out of range");
}

#[test]
fn flow_and_network_configs_reject_impossible_values() {
    rejects(
        "VeConfig, σ_min ≥ σ_max",
        VeConfig {
            sigma_min: 2.0,
            sigma_max: 1.0,
        }
        .init(),
    );
    rejects(
        "VeConfig, NaN",
        VeConfig {
            sigma_min: f64::NAN,
            ..Default::default()
        }
        .init(),
    );
    rejects(
        "VpConfig, β_min > β_max",
        VpConfig {
            beta_min: 30.0,
            beta_max: 1.0,
            ..Default::default()
        }
        .init(),
    );
    rejects(
        "PfgmPPConfig, D = 0",
        PfgmPPConfig {
            d: 0,
            ..Default::default()
        }
        .init(),
    );
    rejects(
        "RectifiedFlowConfig, t_min ≥ t_max",
        RectifiedFlowConfig {
            t_min: 0.5,
            t_max: 0.5,
        }
        .init(),
    );
    rejects(
        "TimeDistribution, std 0",
        TimeDistribution::LogNormal {
            p_mean: 0.0,
            p_std: 0.0,
        }
        .validate(),
    );
    let device = Default::default();
    rejects(
        "MlpConfig, width 0",
        MlpConfig {
            width: 0,
            ..Default::default()
        }
        .init::<Cpu>(&device, 0),
    );
    rejects(
        "MlpConfig, dim 0",
        MlpConfig {
            dim: 0,
            ..Default::default()
        }
        .init::<Cpu>(&device, 0),
    );
    rejects(
        "UNetConfig, zero channels",
        UNetConfig {
            channels: 0,
            ..Default::default()
        }
        .validate(),
    );
}

#[test]
fn train_config_json_names_the_field() {
    for (json, field) in [
        (r#"{"stepz": 5}"#, "stepz"),
        (r#"{"anchor": {"ot_chunk": "big"}}"#, "anchor.ot_chunk"),
        (r#"{"anchor": {"policy": "sometimes"}}"#, "anchor.policy"),
        (r#"{"optimizer": {"lr": -1.0}}"#, "optimizer.lr"),
        (r#"{"batch_size": 0}"#, "batch_size"),
        (
            r#"{"weighting": {"kind": "constant", "w": 2.0}}"#,
            "weighting.w",
        ),
        (
            r#"{"on_divergence": {"kind": "rollback", "lr_factor": 3.0, "max": 1}}"#,
            "on_divergence.lr_factor",
        ),
    ] {
        let e = rejects(json, TrainConfig::from_json(json));
        assert!(e.to_string().contains(field), "{json}: {e}");
    }
    rejects("not JSON", TrainConfig::from_json("{"));
    assert_eq!(
        TrainConfig::from_json("{}").unwrap(),
        TrainConfig::default()
    );
}

#[test]
fn model_and_samplers_reject_bad_input() {
    let device = Default::default();
    let net = MlpConfig::default().init::<Cpu>(&device, 0).unwrap();
    let rf = || RectifiedFlowConfig::default().init().unwrap();
    let law = AnchorLaw::Gaussian { scale: 1.0 };
    use integration_flow::flow::Parameterization::Integral;
    rejects(
        "IntegrationFlowConfig::init, σ_data 0",
        IntegrationFlowConfig {
            parameterization: Integral,
            sigma_data: Some(0.0),
            anchor_law: law.clone(),
        }
        .init(Arc::new(rf()), net.clone()),
    );
    rejects(
        "IntegrationFlowConfig::init, σ_data NaN",
        IntegrationFlowConfig {
            parameterization: Integral,
            sigma_data: Some(f64::NAN),
            anchor_law: law.clone(),
        }
        .init(Arc::new(rf()), net.clone()),
    );
    let model = IntegrationFlowConfig {
        parameterization: Integral,
        sigma_data: Some(1.0),
        anchor_law: law,
    }
    .init(Arc::new(rf()), net)
    .unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    rejects("generate, n = 0", model.generate(&mut rng, 0, 1));
    rejects("generate, 0 iterations", model.generate(&mut rng, 4, 0));
    rejects("sample_prior, n = 0", model.sample_prior(&mut rng, 0));
    rejects("sample_anchor, n = 0", model.sample_anchor(&mut rng, 0));
    rejects("one_step, n = 0", one_step(&model, &mut rng, 0));
    rejects(
        "anchor_iteration, k = 0",
        anchor_iteration(&model, &mut rng, 4, 0),
    );
    let x = Tensor::<Cpu, 2>::from_data(TensorData::new(vec![0.0f32; 6], [2, 3]), &device);
    let a = Tensor::<Cpu, 2>::from_data(TensorData::new(vec![0.0f32; 4], [2, 2]), &device);
    rejects(
        "estimate, x of 3 values",
        model.estimate(x, &[0.5, 0.5], a.clone()),
    );
    rejects(
        "estimate, 3 times for 2 rows",
        model.estimate(a.clone(), &[0.5; 3], a.clone()),
    );
    rejects(
        "estimate, t outside",
        model.estimate(a.clone(), &[0.5, 7.0], a.clone()),
    );
    rejects(
        "estimate, t NaN",
        model.estimate(a.clone(), &[0.5, f64::NAN], a.clone()),
    );
    rejects(
        "renoise, time outside",
        renoise(&model, &mut rng, 4, &[2.0], RenoiseAnchor::Fixed),
    );
    rejects(
        "solve_ode, 0 steps",
        solve_ode(&model, &mut rng, 4, OdeSolver::Euler { steps: 0 }),
    );
    rejects(
        "solve_ode, rtol 0",
        solve_ode(
            &model,
            &mut rng,
            4,
            OdeSolver::Dopri5 {
                rtol: 0.0,
                atol: 1e-5,
            },
        ),
    );
    rejects("ode_time_grid, 0 steps", ode_time_grid(&rf(), 0));
    rejects(
        "RenoiseSchedule, first < last",
        RenoiseSchedule {
            first: 0.01,
            last: 0.5,
        }
        .times(&rf(), 4),
    );
    rejects(
        "generate_batched, count 0",
        generate_batched::<Cpu>(0, 4, |n| one_step(&model, &mut rng, n)),
    );
    rejects("clamp, lo > hi", clamp(a.clone(), 1.0, -1.0));
    rejects("clamp, NaN bound", clamp(a, f64::NAN, 1.0));
}

#[test]
fn anchors_and_assignment_reject_bad_input() {
    let mut rng = StdRng::seed_from_u64(0);
    let memory = AnchorBacking::Memory;
    rejects(
        "AnchorStore::gaussian_in, n = 0",
        AnchorStore::gaussian_in(0, 2, 1.0, AnchorStorage::F32, &memory, &mut rng),
    );
    rejects(
        "AnchorStore::gaussian_in, scale NaN",
        AnchorStore::gaussian_in(4, 2, f64::NAN, AnchorStorage::F32, &memory, &mut rng),
    );
    rejects(
        "AnchorStore::zeros, dim 0",
        AnchorStore::zeros(4, 0, AnchorStorage::F32, &memory),
    );
    rejects(
        "AnchorStore::from_values, ragged",
        AnchorStore::from_values(vec![1.0; 3], 2, AnchorStorage::F32),
    );
    rejects(
        "AnchorStore::from_values, dim 0",
        AnchorStore::from_values(vec![1.0; 4], 0, AnchorStorage::F32),
    );
    let mut store = AnchorStore::from_values(vec![0.0; 8], 2, AnchorStorage::F16).unwrap();
    rejects("AnchorStore::get, index out of range", store.get(&[4]));
    rejects("AnchorStore::set, wrong length", store.set(&[0], &[1.0]));
    rejects("AnchorStore::set, NaN", store.set(&[0], &[1.0, f32::NAN]));
    rejects(
        "AnchorStore::zeros, file in a missing folder",
        AnchorStore::zeros(
            4,
            2,
            AnchorStorage::F32,
            &AnchorBacking::File {
                path: "/nonexistent/folder/anchors.bin".into(),
            },
        ),
    );
    let data = Toy::Moons.sample(16, 0).unwrap();
    rejects(
        "AnchorStore::optimal_transport, chunk 0",
        AnchorStore::optimal_transport(
            &data,
            1.0,
            0,
            Default::default(),
            AnchorStorage::F32,
            &mut rng,
        ),
    );
    let law = SubspaceLaw::fit(&data, 1).unwrap();
    rejects(
        "SubspaceLaw::compose, wrong length",
        law.compose(&[1.0, 2.0]),
    );
    rejects("SubspaceLaw::code, wrong length", law.code(&[1.0]));
    rejects("SubspaceLaw::fit, k = 0", SubspaceLaw::fit(&data, 0));
    let other = SubspaceLaw::fit(
        &Dataset::new(vec![1.0, 2.0, 3.0, 3.0, 1.0, 0.0], 3).unwrap(),
        1,
    )
    .unwrap();
    rejects(
        "AnchorLaw::sample, law of another dimension",
        AnchorLaw::Subspace {
            law: std::sync::Arc::new(other),
        }
        .sample(&mut rng, 2, 2),
    );
    rejects(
        "assignment::solve, not square",
        assignment::solve(&[1.0; 5], 2),
    );
    rejects(
        "assignment::solve, NaN",
        assignment::solve(&[1.0, f64::NAN, 1.0, 1.0], 2),
    );
    rejects(
        "assignment::solve_squared_distances, ragged",
        assignment::solve_squared_distances(&[1.0; 4], &[1.0; 3], 2),
    );
}

#[test]
fn metrics_reject_bad_input() {
    let a = [0.0f32, 1.0, 2.0, 3.0];
    rejects(
        "sliced_wasserstein2, dim 0",
        sliced_wasserstein2(&a, &a, 0, 8, 0),
    );
    rejects(
        "sliced_wasserstein2, ragged",
        sliced_wasserstein2(&a[..3], &a, 2, 8, 0),
    );
    rejects(
        "sliced_wasserstein2, 0 projections",
        sliced_wasserstein2(&a, &a, 2, 0, 0),
    );
    rejects(
        "sliced_wasserstein2, NaN",
        sliced_wasserstein2(&[f32::NAN, 0.0], &a, 2, 8, 0),
    );
    rejects(
        "wasserstein2_1d, empty",
        wasserstein2_1d(&mut [], &mut [1.0]),
    );
    rejects("energy_distance, ragged", energy_distance(&a[..3], &a, 2));
    rejects("mmd, no bandwidth", mmd(&a, &a, 2, &[]));
    rejects("mmd, bandwidth 0", mmd(&a, &a, 2, &[0.0]));
    rejects(
        "nearest_neighbour_distance, empty",
        nearest_neighbour_distance(&[], &a, 2),
    );
    rejects(
        "frechet_distance, one sample",
        frechet_distance(&a[..2], &a, 2),
    );
    rejects(
        "frechet_from_moments, mismatched",
        frechet_from_moments(&[0.0], &[1.0], &[0.0, 0.0], &[1.0; 4]),
    );
}

#[cfg(feature = "eval")]
#[test]
fn plots_reject_bad_input() {
    let dir = scratch("plot");
    let panel = Panel {
        points: &[0.0, 1.0, 2.0],
        colour: [0, 0, 0],
    };
    rejects(
        "scatter_png, odd number of values",
        scatter_png(dir.join("a.png"), &[panel], 1.0, 100),
    );
    let panel = || Panel {
        points: &[0.0, 1.0],
        colour: [0, 0, 0],
    };
    rejects(
        "scatter_png, size 0",
        scatter_png(dir.join("a.png"), &[panel()], 1.0, 0),
    );
    rejects(
        "scatter_png, extent NaN",
        scatter_png(dir.join("a.png"), &[panel()], f32::NAN, 100),
    );
    rejects(
        "scatter_png, unwritable path",
        scatter_png("/nonexistent/folder/a.png", &[panel()], 1.0, 100),
    );
    rejects(
        "image_grid_png, too few values",
        image_grid_png(dir.join("g.png"), &[0.0; 3], [1, 2, 2], 1, 1, 1),
    );
    rejects(
        "image_grid_png, 0 rows",
        image_grid_png(dir.join("g.png"), &[0.0; 4], [1, 2, 2], 0, 1, 1),
    );
    let series = Series {
        name: "s",
        points: &[(1.0, 1.0)],
        colour: [0, 0, 0],
    };
    rejects(
        "line_chart_png, size 0",
        line_chart_png(dir.join("l.png"), "t", "x", "y", &[series], 0, 100),
    );
}

#[test]
fn checkpoints_and_trainer_reject_bad_input() {
    rejects(
        "Trainer::resume, no checkpoint",
        Trainer::resume(
            "/nonexistent/run",
            IntegrationFlowConfig {
                parameterization: integration_flow::flow::Parameterization::Integral,
                sigma_data: Some(1.0),
                anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
            }
            .init(
                Arc::new(RectifiedFlowConfig::default().init().unwrap()),
                MlpConfig::default()
                    .init::<integration_flow::backend::CpuAutodiff>(&Default::default(), 0)
                    .unwrap(),
            )
            .unwrap(),
            Toy::Moons.sample(8, 0).unwrap(),
        )
        .map(|t| t.step()),
    );
    rejects(
        "CheckpointInfo::read, missing",
        CheckpointInfo::read("/nonexistent/run"),
    );
    let trainer = Trainer::new(
        IntegrationFlowConfig {
            parameterization: integration_flow::flow::Parameterization::Integral,
            sigma_data: Some(1.0),
            anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
        }
        .init(
            Arc::new(RectifiedFlowConfig::default().init().unwrap()),
            MlpConfig::default()
                .init::<integration_flow::backend::CpuAutodiff>(&Default::default(), 0)
                .unwrap(),
        )
        .unwrap(),
        Toy::Moons.sample(8, 0).unwrap(),
        TrainConfig {
            batch_size: 4,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    rejects(
        "Trainer::with_metrics_log, missing folder",
        trainer
            .with_metrics_log("/nonexistent/folder/metrics.jsonl")
            .map(|t| t.step()),
    );
    rejects(
        "CheckpointInfo::parse, empty",
        CheckpointInfo::parse(&[], "x"),
    );
}
