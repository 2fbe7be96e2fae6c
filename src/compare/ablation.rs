//! Ablations of the training recipe: one-step and few-step quality per variant, over seeds.

use super::{jobs, summary, train};
use crate::error::Result;
use crate::flow::{Parameterization, ProbabilityFlow};
use crate::metrics::sliced_wasserstein2;
use crate::sample::{anchor_iteration, generate_batched, renoise, RenoiseAnchor, RenoiseSchedule};
use crate::train::TrainConfig;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::CompareConfig;

/// One training recipe of an ablation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// A short name for tables.
    pub name: String,
    /// The training configuration (its `seed` and `steps` are set per run).
    pub train: TrainConfig,
    /// The preconditioning form.
    pub parameterization: Parameterization,
}

/// The noise-to-signal ratios at which [`run_ablation`] also measures 2-step re-noising.
pub const RENOISE_SWEEP: [f64; 8] = [0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5];

/// The smallest ratios ([`RenoiseSchedule::last`], with `first` from the config) at which
/// [`run_ablation`] also measures 4-step re-noising.
pub const RENOISE4_LAST_SWEEP: [f64; 4] = [0.5, 0.2, 0.1, 0.05];

/// Re-noising quality at one noise-to-signal ratio, per seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RatioSw2 {
    /// The re-noising ratio σ/α.
    pub ratio: f64,
    /// SW2 per seed.
    pub sw2: Vec<f64>,
}

/// One-step and few-step (re-noising, fixed anchor) quality of one variant, per seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AblationRow {
    /// The variant's name.
    pub variant: String,
    /// SW2 of one-step samples, one value per seed.
    pub one_step_sw2: Vec<f64>,
    /// SW2 of 2-step re-noising samples (the config's schedule), one value per seed.
    pub renoise2_sw2: Vec<f64>,
    /// SW2 of 4-step re-noising samples (the config's schedule), one value per seed.
    pub renoise4_sw2: Vec<f64>,
    /// 2-step re-noising SW2 at each ratio of [`RENOISE_SWEEP`].
    pub renoise2_sweep: Vec<RatioSw2>,
    /// 4-step re-noising SW2 at each last ratio of [`RENOISE4_LAST_SWEEP`].
    #[serde(default)]
    pub renoise4_sweep: Vec<RatioSw2>,
    /// Final training loss, one value per seed.
    pub final_loss: Vec<f64>,
    /// Mean change of an example's stored anchor over the last epoch, per seed
    /// ([`crate::train::Trainer::anchor_drift`]).
    #[serde(default)]
    pub anchor_drift: Vec<f64>,
}

/// What one (variant, seed) run measured.
struct RunOutput {
    one: f64,
    two: f64,
    four: f64,
    sweep: Vec<f64>,
    sweep4: Vec<f64>,
    loss: f64,
    drift: f64,
}

/// Trains every variant on `flow` for each seed (runs side by side, see [`jobs`]) and measures
/// one-step and re-noising SW2 with `config`'s data sizes; `progress` receives a line per run.
pub fn run_ablation<B: AutodiffBackend>(
    config: &CompareConfig,
    flow: Arc<dyn ProbabilityFlow>,
    variants: &[Variant],
    progress: impl Fn(&str) + Sync,
) -> Result<Vec<AblationRow>> {
    let runs: Vec<(usize, u64)> = (0..config.seeds)
        .flat_map(|seed| (0..variants.len()).map(move |v| (v, seed)))
        .collect();
    let outputs = jobs::run_jobs(&runs, config.workers, |&(v, seed)| {
        let variant = &variants[v];
        let data = config.dataset.sample(config.points, seed)?;
        let reference = config.dataset.sample(config.samples, 1_000 + seed)?;
        let (model, loss, drift) = train::<B>(
            &flow,
            &data,
            &variant.train,
            variant.parameterization,
            config.steps,
            seed,
        )?;
        let sw2 = |s: &[f32]| {
            if s.iter().all(|v| v.is_finite()) {
                sliced_wasserstein2(s, reference.values(), 2, 256, seed)
            } else {
                Ok(f64::NAN)
            }
        };
        let renoised = |times: &[f64]| -> Result<f64> {
            let mut rng = StdRng::seed_from_u64(10_000 + seed);
            let (s, _) = generate_batched(config.samples, 2500, |n| {
                renoise(&model, &mut rng, n, times, RenoiseAnchor::Fixed)
            })?;
            sw2(&s)
        };
        let mut rng = StdRng::seed_from_u64(10_000 + seed);
        let (one, _) = generate_batched(config.samples, 2500, |n| {
            anchor_iteration(&model, &mut rng, n, 1)
        })?;
        let out = RunOutput {
            one: sw2(&one)?,
            two: renoised(&config.renoise.times(flow.as_ref(), 2)?)?,
            four: renoised(&config.renoise.times(flow.as_ref(), 4)?)?,
            sweep: RENOISE_SWEEP
                .iter()
                .map(|&r| {
                    let at = RenoiseSchedule { first: r, last: r };
                    renoised(&at.times(flow.as_ref(), 2)?)
                })
                .collect::<Result<_>>()?,
            sweep4: RENOISE4_LAST_SWEEP
                .iter()
                .map(|&last| {
                    let at = RenoiseSchedule {
                        first: config.renoise.first.max(last),
                        last,
                    };
                    renoised(&at.times(flow.as_ref(), 4)?)
                })
                .collect::<Result<_>>()?,
            loss,
            drift,
        };
        progress(&format!(
            "{:<32} seed {seed}: one-step sw2 {:.4}, re-noise-2 {:.4}, re-noise-4 {:.4}",
            variant.name, out.one, out.two, out.four
        ));
        Ok(out)
    })?;
    let mut rows: Vec<AblationRow> = variants
        .iter()
        .map(|v| AblationRow {
            variant: v.name.clone(),
            renoise2_sweep: empty_sweep(&RENOISE_SWEEP),
            renoise4_sweep: empty_sweep(&RENOISE4_LAST_SWEEP),
            ..Default::default()
        })
        .collect();
    for (&(v, _), out) in runs.iter().zip(outputs) {
        let row = &mut rows[v];
        row.one_step_sw2.push(out.one);
        row.renoise2_sw2.push(out.two);
        row.renoise4_sw2.push(out.four);
        row.final_loss.push(out.loss);
        row.anchor_drift.push(out.drift);
        for (cell, value) in row.renoise2_sweep.iter_mut().zip(out.sweep) {
            cell.sw2.push(value);
        }
        for (cell, value) in row.renoise4_sweep.iter_mut().zip(out.sweep4) {
            cell.sw2.push(value);
        }
    }
    Ok(rows)
}

/// An ablation's rows as a Markdown table, then the re-noising sweep (mean SW2 per ratio).
pub fn ablation_table(title: &str, rows: &[AblationRow]) -> String {
    let mut out = format!(
        "## {title}\n\n| variant | one-step SW2 | re-noise-2 SW2 | re-noise-4 SW2 | final loss | anchor drift (last epoch) |\n|---|---|---|---|---|---|\n"
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.variant,
            summary(&r.one_step_sw2),
            summary(&r.renoise2_sw2),
            summary(&r.renoise4_sw2),
            summary(&r.final_loss),
            summary(&r.anchor_drift)
        ));
    }
    sweep_table(
        &mut out,
        "2-step re-noising SW2 by noise-to-signal ratio σ/α of the re-noising:",
        &RENOISE_SWEEP,
        rows,
        |r| &r.renoise2_sweep,
    );
    sweep_table(
        &mut out,
        "4-step re-noising SW2 by the last ratio (first ratio from the config):",
        &RENOISE4_LAST_SWEEP,
        rows,
        |r| &r.renoise4_sweep,
    );
    out
}

/// Appends one re-noising sweep as a table: a column per ratio, a row per variant.
fn sweep_table(
    out: &mut String,
    caption: &str,
    ratios: &[f64],
    rows: &[AblationRow],
    sweep: impl Fn(&AblationRow) -> &Vec<RatioSw2>,
) {
    out.push_str(&format!("\n{caption}\n\n| variant |"));
    for ratio in ratios {
        out.push_str(&format!(" {ratio} |"));
    }
    out.push_str(&format!("\n|---|{}\n", "---|".repeat(ratios.len())));
    for r in rows {
        out.push_str(&format!("| {} |", r.variant));
        for cell in sweep(r) {
            out.push_str(&format!(" {} |", summary(&cell.sw2)));
        }
        out.push('\n');
    }
}

/// Empty cells, one per ratio, for a sweep's values.
fn empty_sweep(ratios: &[f64]) -> Vec<RatioSw2> {
    ratios
        .iter()
        .map(|&ratio| RatioSw2 {
            ratio,
            sw2: Vec::new(),
        })
        .collect()
}
