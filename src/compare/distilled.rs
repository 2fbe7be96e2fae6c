//! The distillation recipe ([`Distillation`]) as a third model of the 2-D comparison, at the
//! same work as the other two: a denoiser trains for the recipe's teacher share of the steps,
//! and a student that starts from the teacher's weights trains for the steps left. With
//! pairs, the teacher's ODE maps one prior draw (or, encoded, one training point) per training
//! point first, and the pairs' network calls are charged to the student; the flow-map and
//! consistency students pay for their target's extra forward pass with fewer steps.

use super::{fresh_model, EmaModel};
use crate::coupling::AnchorLaw;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::flow::{Parameterization, ProbabilityFlow};
use crate::nn::{MlpConfig, NoiseEmbedding};
use crate::pipeline::{DistillConfig, DistillMethod, Distillation};
use crate::train::TrainConfig;
use crate::train::{FlowMapConfig, FlowMapVelocity, OneStepTarget};
use burn::tensor::backend::AutodiffBackend;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A training step (forward, backward, update) costs about this many forward passes of its
/// batch: the pairs' network calls are charged to the student at this rate.
const FORWARDS_PER_STEP: usize = 3;

/// How `steps` of work split: `(teacher steps, student steps)`, the pairs' network calls
/// (`nfe` per pair, `pairs` pairs) charged as forward passes of a training `batch`, and each
/// student step charged its `extra_forwards` (forward passes without gradients) on top.
pub(crate) fn split_steps(
    steps: usize,
    teacher_share: f64,
    (pairs, nfe): (usize, usize),
    extra_forwards: usize,
    batch: usize,
) -> (usize, usize) {
    let teacher = ((steps as f64 * teacher_share).round() as usize).max(1);
    let pairs_cost = (nfe * pairs).div_ceil(FORWARDS_PER_STEP * batch.max(1));
    let left = steps.saturating_sub(teacher + pairs_cost);
    (
        teacher,
        left * FORWARDS_PER_STEP / (FORWARDS_PER_STEP + extra_forwards),
    )
}

/// Runs the recipe with `method` on `data` with the default MLP (its time embedding smooth in
/// t for the flow map, which differentiates the network in t) and `train`'s settings (its
/// seed set here) in `dir` (made, and removed afterwards); returns the student's EMA model.
pub(crate) fn distil<B: AutodiffBackend>(
    flow: &Arc<dyn ProbabilityFlow>,
    data: &Dataset,
    train: &TrainConfig,
    method: &DistillMethod,
    steps: usize,
    seed: u64,
    dir: &Path,
) -> Result<EmaModel<B>> {
    let mut model = fresh_model::<B>(
        flow,
        data,
        Parameterization::Integral,
        AnchorLaw::Zero,
        seed,
    )?;
    let defaults = DistillConfig::with_method(method.clone());
    let pairs = data.len();
    // Pairs (one per point, their solve's calls) and the student step's extra forward passes.
    // A flow-map student needs a time embedding smooth in t; its finite difference costs one
    // forward pass more (two with the EMA's velocity; the two-jump target's two calls on a
    // quarter of the batch are counted as one more).
    if method.is_flow_map() {
        let net = MlpConfig {
            embedding: NoiseEmbedding::sinusoidal(NoiseEmbedding::SMOOTH_SCALE),
            ..Default::default()
        }
        .init::<B>(&Default::default(), seed)?;
        model = model.with_net(net);
    }
    let flow_map_extra = |config: &FlowMapConfig| {
        let velocity = match config.velocity {
            FlowMapVelocity::Path => 1,
            FlowMapVelocity::Ema => 2,
        };
        let one_step = match config.one_step_target {
            OneStepTarget::Derivative => 0,
            OneStepTarget::TwoJumps => 1,
        };
        velocity + one_step
    };
    let (made, extra_forwards) = match method {
        DistillMethod::GeneratedPairs | DistillMethod::Encoded => ((pairs, defaults.pair_nfe()), 0),
        // Two pairs per point: one generated, one encoded.
        DistillMethod::Mixed => ((2 * pairs, defaults.pair_nfe()), 0),
        DistillMethod::Consistency(_) => ((0, 0), 1),
        DistillMethod::FlowMap(config) => ((0, 0), flow_map_extra(config)),
        DistillMethod::FlowMapPairs(config) => {
            ((pairs, defaults.pair_nfe()), flow_map_extra(config))
        }
    };
    let (teacher_steps, student_steps) = split_steps(
        steps,
        defaults.teacher_share,
        made,
        extra_forwards,
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
        assert_eq!(
            split_steps(20_000, 0.55, (8192, 11), 0, 512),
            (11_000, 8_941)
        );
        assert_eq!(split_steps(10, 0.55, (100_000, 11), 0, 250), (6, 0));
        // A flow-map step (one more forward pass) costs 4/3 of a plain one: 9,000 steps of
        // work left buy 6,750.
        assert_eq!(split_steps(20_000, 0.55, (0, 0), 1, 512), (11_000, 6_750));
    }
}
