//! The divergence guard: what happens when a step's loss or gradient is not finite
//! ([`DivergencePolicy`]).

use super::config::DivergencePolicy;
use super::distribution_matching::ScoreState;
use super::trainer::{StepStats, Trainer};
use crate::error::{Error, Result};
use crate::nn::IntegrationNet;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How often the divergence guard acted in this run (saved in checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct GuardCounts {
    pub(super) skipped: usize,
    pub(super) rollbacks: usize,
}

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// One optimizer step on the next batch. A non-finite loss or gradient is handled by
    /// [`TrainConfig::on_divergence`](super::TrainConfig::on_divergence): an error naming the
    /// step, a skipped step (returned with `skipped` set), or a rollback to the last checkpoint
    /// (the returned step is then the first one after it). The step runs on one of rayon's
    /// threads ([`crate::backend::on_pool`]).
    pub fn train_step(&mut self) -> Result<StepStats> {
        crate::backend::on_pool(|| match self.try_step() {
            Err(Error::Diverged { step, reason }) => self.on_divergence(step, reason),
            other => other,
        })
    }

    fn on_divergence(&mut self, step: usize, reason: String) -> Result<StepStats> {
        let stop = |why: String| Error::Diverged { step, reason: why };
        match self.config.on_divergence {
            DivergencePolicy::Stop => {
                self.log_event(step, "stop", &reason, None)?;
                Err(stop(reason))
            }
            DivergencePolicy::Skip { max } => {
                if self.guard.skipped >= max {
                    self.log_event(step, "stop", &reason, None)?;
                    return Err(stop(format!("{reason} (after {max} skipped steps)")));
                }
                self.guard.skipped += 1;
                self.log_event(step, "skip", &reason, None)?;
                let epoch = self.position.epoch;
                let w = self.data_weight(epoch);
                let anchor_drift = self.advance()?;
                Ok(StepStats {
                    step,
                    epoch,
                    loss: f64::NAN,
                    grad_norm: f64::NAN,
                    lr: self.lr_at(step),
                    w,
                    anchor_drift,
                    critic_loss: None,
                    skipped: true,
                })
            }
            DivergencePolicy::Rollback { lr_factor, max } => {
                if self.guard.rollbacks >= max {
                    self.log_event(step, "stop", &reason, None)?;
                    return Err(stop(format!("{reason} (after {max} rollbacks)")));
                }
                let Some(dir) = self.checkpoint_dir.clone() else {
                    return Err(stop(format!(
                        "{reason}; policy rollback needs a checkpoint directory"
                    )));
                };
                let lr = self.config.optimizer.lr * lr_factor;
                self.rollback(&dir, lr)
                    .map_err(|e| stop(format!("{reason}; rolling back failed: {e}")))?;
                self.log_event(step, "rollback", &reason, Some(lr))?;
                self.train_step()
            }
        }
    }

    /// Replaces the training state by the checkpoint in `dir` and sets the learning rate;
    /// the guard's counts carry on (one more rollback).
    fn rollback(&mut self, dir: &Path, lr: f64) -> Result<()> {
        // A file-backed store is re-created at its path: unmap the current one first.
        self.anchors = None;
        let mut back = Self::resume_with_coupling(
            dir,
            self.model.clone(),
            self.data.clone(),
            self.coupling.clone(),
        )?;
        back.config.optimizer.lr = lr;
        self.model = back.model;
        self.ema = back.ema;
        self.optim = back.optim;
        self.anchors = back.anchors;
        self.critic = back.critic;
        // The fake denoiser as the checkpoint had it (or, where it had none, a fresh copy of
        // the teacher), with the teacher this run was given.
        let teacher = self.score.as_ref().and_then(|s| s.teacher().cloned());
        self.score = match (back.score, teacher) {
            (Some(mut score), Some(teacher)) => {
                score.set_teacher(&teacher);
                Some(score)
            }
            (None, Some(teacher)) => Some(ScoreState::from_teacher(teacher)),
            (score, None) => score,
        };
        self.config = back.config;
        self.position = back.position;
        self.drift = back.drift;
        self.order = back.order;
        self.guard.rollbacks += 1;
        Ok(())
    }

    /// A metrics-log line for a divergence event.
    fn log_event(
        &mut self,
        step: usize,
        action: &str,
        reason: &str,
        lr: Option<f64>,
    ) -> Result<()> {
        let mut line = serde_json::json!({
            "event": "diverged",
            "step": step,
            "action": action,
            "reason": reason,
            "skipped": self.guard.skipped,
            "rollbacks": self.guard.rollbacks,
            "resume_step": self.position.step,
        });
        if let Some(lr) = lr {
            line["lr"] = serde_json::json!(lr);
        }
        self.write_metrics_line(&line.to_string())
    }
}

/// Whether every parameter value of `module` is finite.
pub(super) fn params_finite<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Finite(bool);
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0 {
                let flat = param.val().reshape([-1]);
                let bad = flat.clone().is_nan().bool_or(flat.is_inf()).any();
                self.0 = !bad.into_scalar().elem::<bool>();
            }
        }
    }
    let mut finite = Finite(true);
    module.visit(&mut finite);
    finite.0
}
