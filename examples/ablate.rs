//! Ablations of the training recipe: one-step and 2-step quality per variant, over seeds.
//!
//! ```sh
//! cargo run --release --example ablate -- [--knob default|policy|weighting|parameterization|distance|time|chunk|points|refresh|space|tmax|all]
//!     [--dataset NAME] [--flow rf|vp|ve|pfgmpp] [--steps N] [--seeds K] [--out DIR]
//! ```
//!
//! Writes `DIR/ablation_<knob>.md` and `.json`.
use clap::Parser;
use integration_flow::backend::CpuAutodiff;
use integration_flow::compare::{ablation_table, run_ablation, CompareConfig, Variant};
use integration_flow::data::Toy;
use integration_flow::flow::{
    FlowConfig, Parameterization, ProbabilityFlow, RectifiedFlowConfig, TimeDistribution,
};
use integration_flow::train::{AnchorPolicy, Distance, OtSpace, TrainConfig, Weighting};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
struct Args {
    /// What to vary.
    #[arg(long, default_value = "policy")]
    knob: String,
    /// Toy dataset.
    #[arg(long, default_value = "checkerboard")]
    dataset: String,
    /// Flow family.
    #[arg(long, default_value = "rf")]
    flow: String,
    /// Training steps per run.
    #[arg(long, default_value_t = 8000)]
    steps: usize,
    /// Seeds per variant.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Training points.
    #[arg(long, default_value_t = 8192)]
    points: usize,
    /// Output directory.
    #[arg(long, default_value = "runs/ablate")]
    out: PathBuf,
}

fn variant(name: &str, edit: impl FnOnce(&mut TrainConfig)) -> Variant {
    let mut train = TrainConfig::default();
    edit(&mut train);
    Variant {
        name: name.into(),
        train,
        parameterization: Parameterization::Integral,
    }
}

fn variants(knob: &str) -> Result<Vec<Variant>, String> {
    Ok(match knob {
        "policy" => [
            AnchorPolicy::Ot,
            AnchorPolicy::Prediction,
            AnchorPolicy::Data,
            AnchorPolicy::Frozen,
            AnchorPolicy::Off,
        ]
        .into_iter()
        .map(|p| variant(&format!("{p:?}").to_lowercase(), |c| c.anchor.policy = p))
        .collect(),
        "weighting" => [
            ("prediction, 1/(e+1)", Weighting::InverseEpoch),
            ("prediction, w = 0.5", Weighting::Constant { w: 0.5 }),
            ("prediction, w = 0.9", Weighting::Constant { w: 0.9 }),
            (
                "prediction, 1 → 0 over 100 epochs",
                Weighting::Linear {
                    from: 1.0,
                    to: 0.0,
                    epochs: 100,
                },
            ),
        ]
        .into_iter()
        .map(|(name, w)| {
            variant(name, |c| {
                c.anchor.policy = AnchorPolicy::Prediction;
                c.weighting = w;
            })
        })
        .collect(),
        "parameterization" => {
            let mut edm = variant("edm", |_| {});
            edm.parameterization = Parameterization::Edm;
            vec![variant("integral", |_| {}), edm]
        }
        "distance" => [
            ("squared l2", Distance::SquaredL2),
            ("pseudo-huber", Distance::PseudoHuber { c: None }),
            (
                "pseudo-huber per element",
                Distance::PseudoHuberElementwise { c: None },
            ),
            ("l1", Distance::L1),
        ]
        .into_iter()
        .map(|(name, d)| variant(name, |c| c.distance = d))
        .collect(),
        "time" => [
            ("uniform", TimeDistribution::Uniform),
            ("log-normal (EDM)", TimeDistribution::EDM),
            (
                "logit-normal (0, 1)",
                TimeDistribution::LogitNormal {
                    mean: 0.0,
                    std: 1.0,
                },
            ),
        ]
        .into_iter()
        .map(|(name, t)| variant(name, |c| c.time = t))
        .collect(),
        "default" => vec![variant("default (ot)", |_| {})],
        "refresh" => [0usize, 10, 50]
            .into_iter()
            .map(|k| {
                let name = if k == 0 {
                    "ot, frozen matching".to_string()
                } else {
                    format!("ot, re-matched every {k} epochs")
                };
                variant(&name, |c| c.anchor.ot_refresh_epochs = k)
            })
            .collect(),
        "space" => vec![
            variant("ot in the data space", |_| {}),
            variant("ot on the first principal direction", |c| {
                c.anchor.ot_space = OtSpace::Pca { dims: 1 }
            }),
        ],
        "tmax" => [0.0, 0.1, 0.25, 0.5]
            .into_iter()
            .map(|f| {
                variant(&format!("{f} of each batch at t_max"), |c| {
                    c.t_max_fraction = f
                })
            })
            .collect(),
        "chunk" => [256usize, 1024, 4096, 8192]
            .into_iter()
            .map(|k| variant(&format!("ot chunk {k}"), |c| c.anchor.ot_chunk = k))
            .collect(),
        "chunk8192" => [8192usize]
            .into_iter()
            .map(|k| variant(&format!("ot chunk {k}"), |c| c.anchor.ot_chunk = k))
            .collect(),
        other => return Err(format!("unknown knob {other:?}")),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Reuse freed tensor memory instead of faulting it back in every step (docs/benchmarks.md).
    integration_flow::backend::tune_allocator();
    let args = Args::parse();
    let toy: Toy = args.dataset.parse()?;
    let mut flow: Arc<dyn ProbabilityFlow> = args.flow.parse::<FlowConfig>()?.init()?;
    std::fs::create_dir_all(&args.out)?;
    let knobs: Vec<&str> = if args.knob == "all" {
        vec![
            "policy",
            "weighting",
            "parameterization",
            "distance",
            "time",
            "chunk",
            "points",
            "refresh",
            "space",
            "tmax",
        ]
    } else {
        vec![args.knob.as_str()]
    };
    for knob in knobs {
        let mut config = CompareConfig::standard(toy);
        config.steps = args.steps;
        config.seeds = args.seeds;
        config.points = args.points;
        if knob == "parameterization" && flow.name() == "rf" {
            // EDM's form is singular at rectified flow's ends.
            flow = Arc::new(
                RectifiedFlowConfig {
                    t_min: 1e-3,
                    t_max: 1.0 - 1e-3,
                }
                .init()?,
            );
        }
        let mut table = format!(
            "# ablation: {knob} ({}, {}, {} steps, {} seeds)\n\n",
            toy.name(),
            flow.name(),
            config.steps,
            config.seeds
        );
        let mut all_rows = Vec::new();
        if knob == "points" {
            for points in [8192usize, 65_536] {
                config.points = points;
                let rows = run_ablation::<CpuAutodiff>(
                    &config,
                    flow.clone(),
                    &[variant(&format!("{points} points"), |_| {})],
                    |l| eprintln!("{l}"),
                )?;
                table.push_str(&ablation_table(&format!("{points} training points"), &rows));
                all_rows.extend(rows);
            }
        } else {
            let rows = run_ablation::<CpuAutodiff>(&config, flow.clone(), &variants(knob)?, |l| {
                eprintln!("{l}")
            })?;
            table.push_str(&ablation_table(knob, &rows));
            all_rows.extend(rows);
        }
        integration_flow::data::write_atomically(
            args.out.join(format!("ablation_{knob}.md")),
            &table,
        )?;
        integration_flow::data::write_atomically(
            args.out.join(format!("ablation_{knob}.json")),
            serde_json::to_string_pretty(&all_rows)?,
        )?;
        println!("{table}");
    }
    Ok(())
}
