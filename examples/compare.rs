//! Integration Flow against the classical way of sampling, on a toy 2-D dataset.
//!
//! ```sh
//! cargo run --release --example compare -- [--dataset NAME] [--steps N] [--seeds K] [--out DIR] [--quick]
//! ```
//!
//! For each flow it trains the default Integration Flow model (OT anchors) and the baseline
//! (the same network with anchor policy `off`: a plain x̂_0 denoiser) with the same steps and
//! seed, then measures every sampler: IF one step, anchor iteration (2, 4, 8) and re-noising
//! (2, 4, 8); baseline Euler (1, 2, 4, 8, 16, 100), Heun (8), RK4 (8) and DOPRI5. Writes
//! `DIR/table.md`, `DIR/results.json` and `DIR/<flow>_if_nfe1.npy` (one-step samples).
use clap::Parser;
use integration_flow::backend::CpuAutodiff;
use integration_flow::compare::{markdown_table, run_compare, CompareConfig};
use integration_flow::data::{write_npy_f32, Toy};
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
    /// Output directory.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// A small, fast run (300 steps, 2048 points, 1000 samples).
    #[arg(long)]
    quick: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    std::fs::create_dir_all(&args.out)?;
    let (results, one_step) = run_compare::<CpuAutodiff>(&config, |line| eprintln!("{line}"))?;
    for (flow, samples) in &one_step {
        write_npy_f32(
            args.out.join(format!("{flow}_if_nfe1.npy")),
            samples,
            &[samples.len() / 2, 2],
        )?;
    }
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let table = markdown_table(&config, &results);
    std::fs::write(args.out.join("table.md"), &table)?;
    println!("{table}");
    Ok(())
}
