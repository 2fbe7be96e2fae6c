//! The trainer's side of a data-parallel step: the batch's rows in shards, one job per
//! worker, the answers combined into the one update the step applies.

use super::pool::{Job, WorkerPool};
use super::DataParallelConfig;
use crate::error::{Error, Result};
use crate::nn::IntegrationNet;
use crate::train::batch::Rows;
use crate::train::step::{finite_or_diverged, Estimates, Outcome};
use crate::train::Trainer;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// The step's loss and clipped gradient from the workers (started at the first such
    /// step). A worker's failure takes the pool down; the next step starts a new one.
    pub(in crate::train) fn on_workers(
        &mut self,
        step: usize,
        w: f64,
        rows: &Rows,
        parallel: &DataParallelConfig,
    ) -> Result<Outcome<B>> {
        let pool = match self.workers.take() {
            Some(pool) => pool,
            None => {
                let devices = match &self.worker_devices {
                    Some(devices) => devices.clone(),
                    None => vec![self.device.clone(); parallel.workers],
                };
                WorkerPool::start(parallel, devices, self.config.flush_denormals, step)?
            }
        };
        let n = rows.len();
        let estimates = self.anchors.is_some();
        let jobs = parallel
            .shards(n)
            .into_iter()
            .map(|range| Job {
                model: self.model.clone(),
                ema: self.ema.clone(),
                config: self.config.clone(),
                step,
                w,
                share: range.len() as f64 / n as f64,
                rows: rows.slice(range),
                estimates,
            })
            .collect();
        let mut pool = pool;
        // On an error the pool is dropped here, which ends its threads.
        let answers = pool.run(step, jobs)?;
        self.workers = Some(pool);
        // The batch's mean loss: the shards' parts, added in worker order.
        let loss: f64 = answers.iter().map(|answer| answer.loss).sum();
        let mut grads = None;
        let mut values = Vec::with_capacity(if estimates { rows.x0.len() } else { 0 });
        for answer in answers {
            if let Some(sum) = answer.grads {
                grads = Some(sum);
            }
            values.extend(answer.estimates.unwrap_or_default());
        }
        finite_or_diverged(step, "loss", loss)?;
        let grads = grads.ok_or_else(|| Error::Worker {
            worker: 0,
            step,
            reason: "answered without the summed gradients".into(),
        })?;
        let (grads, grad_norm) = self.clipped(step, grads)?;
        Ok(Outcome {
            loss,
            grads,
            grad_norm,
            estimates: Estimates::Values(values),
            critic_loss: None,
        })
    }
}
