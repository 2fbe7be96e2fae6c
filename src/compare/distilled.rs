//! The distillation recipe (the `mnist` default: [`Distillation`]) as a third model of the 2-D
//! comparison, at the same work as the other two: a denoiser trains for the recipe's teacher
//! share of the steps, its ODE maps one prior draw per training point to a sample (the pairs),
//! and a student that starts from the teacher's weights learns the pairs for the steps left.

use super::{fresh_model, EmaModel};
use crate::coupling::AnchorLaw;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::flow::{Parameterization, ProbabilityFlow};
use crate::pipeline::{DistillConfig, Distillation};
use crate::train::TrainConfig;
use burn::tensor::backend::AutodiffBackend;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A training step (forward, backward, update) costs about this many forward passes of its
/// batch: the pairs' network calls are charged to the student at this rate.
const FORWARDS_PER_STEP: usize = 3;

/// How `steps` of work split: `(teacher steps, student steps)`, the pairs' network calls
/// (`nfe` per pair, `pairs` pairs) charged as forward passes of a training `batch`.
pub(crate) fn split_steps(
    steps: usize,
    teacher_share: f64,
    pairs: usize,
    nfe: usize,
    batch: usize,
) -> (usize, usize) {
    let teacher = ((steps as f64 * teacher_share).round() as usize).max(1);
    let pairs_cost = (nfe * pairs).div_ceil(FORWARDS_PER_STEP * batch.max(1));
    (teacher, steps.saturating_sub(teacher + pairs_cost))
}

/// Runs the recipe on `data` with the default MLP and `train`'s settings (its seed set here)
/// in `dir` (made, and removed afterwards); returns the student's EMA model.
pub(crate) fn distil<B: AutodiffBackend>(
    flow: &Arc<dyn ProbabilityFlow>,
    data: &Dataset,
    train: &TrainConfig,
    steps: usize,
    seed: u64,
    dir: &Path,
) -> Result<EmaModel<B>> {
    let model = fresh_model::<B>(
        flow,
        data,
        Parameterization::Integral,
        AnchorLaw::Zero,
        seed,
    )?;
    let defaults = DistillConfig::default();
    let pairs = data.len();
    let (teacher_steps, student_steps) = split_steps(
        steps,
        defaults.teacher_share,
        pairs,
        defaults.pair_nfe(),
        train.batch_size,
    );
    if student_steps == 0 {
        return Err(Error::InvalidArgument {
            name: "steps",
            reason: format!("{steps} steps leave the distilled student none"),
        });
    }
    // The pipeline trains its teacher with the `off` coupling whatever `train` says.
    let teacher = TrainConfig {
        seed,
        steps: teacher_steps,
        progress: false,
        ..train.clone()
    };
    let recipe = DistillConfig {
        pairs,
        student_steps,
        ..defaults
    };
    let mut run = Distillation::new(dir, model, data.clone(), teacher, recipe)?;
    run.start_over()?;
    // Steps, not time, bound each stage: the budget only has to outlast them.
    let student = run.run_for(Duration::from_secs(365 * 24 * 3600))?;
    let ema = student.ema_model();
    let _ = std::fs::remove_dir_all(dir);
    Ok(ema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pairs_are_charged_to_the_student() {
        // 20k steps: 11k for the teacher; 8192 pairs of 11 calls are 176 forward passes of a
        // 512-row batch, 59 steps' worth.
        assert_eq!(split_steps(20_000, 0.55, 8192, 11, 512), (11_000, 8_941));
        assert_eq!(split_steps(10, 0.55, 100_000, 11, 250), (6, 0));
    }
}
