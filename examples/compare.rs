//! Integration Flow against the classical way of sampling, on a toy 2-D dataset.
//!
//! ```sh
//! cargo run --release --example compare -- [--dataset NAME] [--steps N] [--seeds K] [--out DIR] [--quick]
//!     [--samples N] [--flows rf,vp,ve,pfgmpp] [--points N] [--distill [--distill-method M]]
//! ```
//!
//! For each flow it trains the default Integration Flow model (OT anchors) and the baseline
//! (the same network with anchor policy `off`: a plain x̂_0 denoiser) with the same steps and
//! seed, then measures every sampler: IF one step, anchor iteration (2, 4, 8) and re-noising
//! (2, 4, 8); with `--distill` the distillation recipe too (its one-step student in the same
//! steps: one call, re-noising 2, 4, 8); baseline Euler (1, 2, 4, 8, 16, 100), Heun (8), RK4 (8) and DOPRI5. Writes
//! `DIR/table.md`, `DIR/results.json`, `DIR/<flow>_if_nfe1.npy` (one-step samples of seed 0),
//! `DIR/<flow>_sw2_vs_nfe.png` (quality against NFE) and `DIR/scatter_grid.png` (samples).
//! Each finished job (one model, flow and seed) is saved in `DIR/jobs/` as it completes: the
//! same command run again after a stop picks up where it was.
use clap::Parser;
use integration_flow::backend::CpuAutodiff;
use integration_flow::compare::{markdown_table, run_compare, CompareConfig};
use integration_flow::compare::{CompareResults, KEPT_METHODS};
use integration_flow::data::{write_npy_f32, Toy};
use integration_flow::pipeline::DistillMethod;
use integration_flow::plot::{line_chart_png, scatter_grid_png, Panel, Series, PALETTE};
use integration_flow::train::{ConsistencyConfig, FlowMapConfig};
use std::path::PathBuf;

#[derive(Parser, Debug)]
struct Args {
    /// Toy dataset.
    #[arg(long, default_value = "checkerboard")]
    dataset: String,
    /// Training steps of each model.
    #[arg(long)]
    steps: Option<usize>,
    /// Seeds to average over.
    #[arg(long)]
    seeds: Option<u64>,
    /// Training points.
    #[arg(long)]
    points: Option<usize>,
    /// Samples per method for the metrics (default 10,000; the `.npy` files keep the first
    /// 10,000). More samples lower the SW2 noise floor.
    #[arg(long)]
    samples: Option<usize>,
    /// Only these flows, comma-separated (default: rf, vp, ve, pfgmpp).
    #[arg(long, value_delimiter = ',')]
    flows: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// A small, fast run (300 steps, 2048 points, 1000 samples).
    #[arg(long)]
    quick: bool,
    /// Also run the distillation recipe (the `mnist` default) in the same steps: rows
    /// `distill-1` (one call) and `distill-renoise-k`.
    #[arg(long)]
    distill: bool,
    /// With --distill, the student's method: flow-map (the `mnist` default), pairs, encoded,
    /// mixed, consistency or flow-map-pairs.
    #[arg(long, default_value = "flow-map")]
    distill_method: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Reuse freed tensor memory instead of faulting it back in every step (docs/benchmarks.md).
    integration_flow::backend::tune_allocator();
    let args = Args::parse();
    let toy: Toy = args.dataset.parse()?;
    let mut config = if args.quick {
        CompareConfig::quick(toy)
    } else {
        CompareConfig::standard(toy)
    };
    config.steps = args.steps.unwrap_or(config.steps);
    config.seeds = args.seeds.unwrap_or(config.seeds);
    config.points = args.points.unwrap_or(config.points);
    config.samples = args.samples.unwrap_or(config.samples);
    config.flows = args.flows.clone();
    config.distill = args.distill;
    config.distill_method = match args.distill_method.as_str() {
        "flow-map" => DistillMethod::FlowMap(FlowMapConfig::default()),
        "pairs" => DistillMethod::GeneratedPairs,
        "encoded" => DistillMethod::Encoded,
        "mixed" => DistillMethod::Mixed,
        "flow-map-pairs" => DistillMethod::FlowMapPairs(FlowMapConfig::default()),
        "consistency" => DistillMethod::Consistency(ConsistencyConfig::default()),
        other => {
            return Err(format!(
                "unknown --distill-method {other:?}: use flow-map, pairs, encoded, mixed, \
                 consistency or flow-map-pairs"
            )
            .into())
        }
    };
    std::fs::create_dir_all(&args.out)?;
    // Finished jobs are kept here: a stopped run, started again, picks up where it was.
    config.job_dir = Some(args.out.join("jobs"));
    let started = std::time::Instant::now();
    let output = run_compare::<CpuAutodiff>(&config, |line| eprintln!("{line}"))?;
    let results = &output.results;
    for ((flow, method), samples) in &output.samples {
        if method == "if-anchor-1" {
            let kept = &samples[..samples.len().min(2 * 10_000)];
            write_npy_f32(
                args.out.join(format!("{flow}_if_nfe1.npy")),
                kept,
                &[kept.len() / 2, 2],
            )?;
        }
    }
    integration_flow::data::write_atomically(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let data = toy.sample(config.samples, 1_000)?;
    write_figures(&args.out, toy, results, &output.samples, data.values())?;
    let table = markdown_table(&config, results);
    integration_flow::data::write_atomically(args.out.join("table.md"), &table)?;
    println!("{table}");
    eprintln!(
        "compare finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `DIR/<flow>_sw2_vs_nfe.png` per flow and `DIR/scatter_grid.png` (rows: flows; columns: data
/// and the kept methods' seed-0 samples).
fn write_figures(
    out: &std::path::Path,
    toy: Toy,
    results: &CompareResults,
    samples: &std::collections::BTreeMap<(String, String), Vec<f32>>,
    data: &[f32],
) -> Result<(), Box<dyn std::error::Error>> {
    let flows: Vec<String> = results.prior_sw2.keys().cloned().collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for flow in &flows {
        let curve = |methods: &[&str]| -> Vec<(f64, f64)> {
            methods
                .iter()
                .filter_map(|m| results.row(flow, m))
                .map(|r| (r.nfe as f64, mean(&r.sw2)))
                .collect()
        };
        let anchor = curve(&["if-anchor-1", "if-anchor-2", "if-anchor-4", "if-anchor-8"]);
        let renoise = curve(&[
            "if-anchor-1",
            "if-renoise-2",
            "if-renoise-4",
            "if-renoise-8",
        ]);
        let euler = curve(&[
            "baseline-euler-1",
            "baseline-euler-2",
            "baseline-euler-4",
            "baseline-euler-8",
            "baseline-euler-16",
            "baseline-euler-100",
        ]);
        let distilled = curve(&[
            "distill-1",
            "distill-renoise-2",
            "distill-renoise-4",
            "distill-renoise-8",
        ]);
        let heun = curve(&["baseline-heun-8"]);
        let rk4 = curve(&["baseline-rk4-8"]);
        let dopri = curve(&["baseline-dopri5-1e-5-1e-5"]);
        let mut series = vec![
            Series {
                name: "IF re-noise",
                points: &renoise,
                colour: PALETTE[0],
            },
            Series {
                name: "IF anchor iter.",
                points: &anchor,
                colour: PALETTE[4],
            },
            Series {
                name: "ODE Euler",
                points: &euler,
                colour: PALETTE[1],
            },
            Series {
                name: "ODE Heun 8",
                points: &heun,
                colour: PALETTE[2],
            },
            Series {
                name: "ODE RK4 8",
                points: &rk4,
                colour: PALETTE[3],
            },
            Series {
                name: "ODE DOPRI5",
                points: &dopri,
                colour: PALETTE[5],
            },
        ];
        if !distilled.is_empty() {
            series.push(Series {
                name: "distilled",
                points: &distilled,
                colour: PALETTE[6],
            });
        }
        line_chart_png(
            out.join(format!("{flow}_sw2_vs_nfe.png")),
            &format!(
                "{flow} on {}: SW2 against NFE (lower is better)",
                toy.name()
            ),
            "network evaluations per sample (NFE)",
            "SW2",
            &series,
            720,
            420,
        )?;
    }
    let titles = [
        "data",
        "IF 1 step",
        "IF re-noise 2",
        "ODE Euler 8",
        "ODE DOPRI5",
    ];
    let grid: Vec<Vec<Panel>> = flows
        .iter()
        .map(|flow| {
            let mut row = vec![Panel {
                points: data,
                colour: [60, 60, 60],
            }];
            for (i, method) in KEPT_METHODS.iter().enumerate() {
                let points = samples
                    .get(&(flow.clone(), method.to_string()))
                    .map_or(&[][..], |v| v.as_slice());
                row.push(Panel {
                    points,
                    colour: PALETTE[i],
                });
            }
            row
        })
        .collect();
    let rows: Vec<&[Panel]> = grid.iter().map(|r| r.as_slice()).collect();
    let names: Vec<&str> = flows.iter().map(|f| f.as_str()).collect();
    scatter_grid_png(
        out.join("scatter_grid.png"),
        &rows,
        &titles,
        &names,
        4.5,
        200,
    )?;
    Ok(())
}
