//! Data-parallel training (docs/training.md, "Several workers"): each step's batch is drawn
//! as one worker would draw it, split into contiguous shards, one per worker; each worker runs
//! the estimate, loss and backward pass on its shard with a replica of the model on its own
//! device; burn-collective's all-reduce sums the gradients; the trainer then takes one
//! optimizer step, one EMA update and one anchor-store update (the shards' estimates in batch
//! order), exactly as with one worker. Checkpoints and resume do not change.
//!
//! The workers are threads of this process (burn-collective 0.21 reduces between devices of
//! one machine; it has no multi-node reduce). They run with the `data-parallel` feature;
//! [`DataParallelConfig`] is there without it, so that configurations and checkpoints read
//! the same, and a run that asks for workers without the feature is refused.

#[cfg(feature = "data-parallel")]
pub(super) mod pool;
#[cfg(feature = "data-parallel")]
mod reduce;
#[cfg(feature = "data-parallel")]
mod sharded;

use crate::error::{invalid_config, require_finite, Error, Result};
use crate::nn::IntegrationNet;
use crate::train::Trainer;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// How a step's batch is shared between workers ([`TrainConfig::data_parallel`](super::TrainConfig)).
///
/// The batch (`batch_size`) is the global one: with `workers: 2` and `batch_size: 512` each
/// worker takes 256 rows, and the run follows the one-worker run of batch 512 to float
/// tolerance (the same batches, times and noise; only the order of the sums differs).
///
/// ```
/// use integration_flow::train::{DataParallelConfig, TrainConfig};
/// let config = TrainConfig {
///     batch_size: 512,
///     data_parallel: Some(DataParallelConfig { workers: 2, ..Default::default() }),
///     ..Default::default()
/// };
/// config.validate()?;
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataParallelConfig {
    /// Workers (threads, each with a replica of the model on its device), at least 2 and at
    /// most the batch size. Their devices are the model's unless
    /// [`Trainer::with_worker_devices`](super::Trainer::with_worker_devices) names others.
    pub workers: usize,
    /// Seconds a step waits for its slowest worker; past it the run stops with
    /// [`Error::Worker`] instead of waiting for ever (burn-collective's
    /// all-reduce has no timeout of its own). Generous by default: a first step on a large
    /// model can take minutes. Also how long starting the workers waits for another
    /// data-parallel run of the process to end. At most 1e9.
    pub timeout_secs: f64,
    /// Compute threads per worker (0: the process's threads divided among the workers, at
    /// least 1 each), so that workers on one CPU share its cores rather than oversubscribe
    /// them. At most 1024.
    pub threads_per_worker: usize,
}

/// The longest step wait accepted (about 32 years: "for ever", within what a clock can add).
const MAX_TIMEOUT_SECS: f64 = 1e9;
/// The most compute threads a worker may ask for.
const MAX_THREADS_PER_WORKER: usize = 1024;

impl Default for DataParallelConfig {
    fn default() -> Self {
        DataParallelConfig {
            workers: 2,
            timeout_secs: 600.0,
            threads_per_worker: 0,
        }
    }
}

impl DataParallelConfig {
    /// Checks the settings against the batch size; an error names `config` and the field.
    pub fn check(&self, config: &'static str, batch_size: usize) -> Result<()> {
        if self.workers < 2 {
            return Err(invalid_config(
                config,
                "data_parallel.workers",
                format!(
                    "must be at least 2, got {} (leave data_parallel out for one worker)",
                    self.workers
                ),
            ));
        }
        if self.workers > batch_size {
            return Err(invalid_config(
                config,
                "data_parallel.workers",
                format!(
                    "{} workers exceed the batch size {batch_size}: every worker needs a row",
                    self.workers
                ),
            ));
        }
        require_finite(config, "data_parallel.timeout_secs", self.timeout_secs)?;
        if !(self.timeout_secs > 0.0 && self.timeout_secs <= MAX_TIMEOUT_SECS) {
            return Err(invalid_config(
                config,
                "data_parallel.timeout_secs",
                format!(
                    "must be positive and at most {MAX_TIMEOUT_SECS:e} s, got {}",
                    self.timeout_secs
                ),
            ));
        }
        if self.threads_per_worker > MAX_THREADS_PER_WORKER {
            return Err(invalid_config(
                config,
                "data_parallel.threads_per_worker",
                format!(
                    "must be at most {MAX_THREADS_PER_WORKER} (0: the process's threads shared), \
                     got {}",
                    self.threads_per_worker
                ),
            ));
        }
        Ok(())
    }

    /// The contiguous rows of a batch of `n` each worker takes: as equal as possible, the
    /// larger shards first (a short last batch can leave the last workers none).
    /// A configuration of no workers (refused by [`check`](Self::check)) is taken as one.
    pub fn shards(&self, n: usize) -> Vec<std::ops::Range<usize>> {
        let workers = self.workers.max(1);
        let (base, extra) = (n / workers, n % workers);
        let mut start = 0;
        (0..workers)
            .map(|k| {
                let len = base + usize::from(k < extra);
                let range = start..start + len;
                start += len;
                range
            })
            .collect()
    }
}

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// Puts the data-parallel workers (`config.data_parallel`) on `devices`, one each; by
    /// default every worker uses the model's device (threads sharing one CPU or GPU). Worker 0
    /// applies the update, so its device must be the model's. A configuration without
    /// workers, or a device count other than theirs, is refused.
    pub fn with_worker_devices(mut self, devices: Vec<B::Device>) -> Result<Self> {
        let Some(parallel) = &self.config.data_parallel else {
            return Err(invalid_config(
                "TrainConfig",
                "data_parallel",
                "worker devices were given but the configuration has no workers \
                 (set data_parallel: {workers})",
            ));
        };
        if devices.len() != parallel.workers {
            return Err(Error::InvalidArgument {
                name: "devices",
                reason: format!(
                    "{} devices for {} workers: give one per worker",
                    devices.len(),
                    parallel.workers
                ),
            });
        }
        if devices[0] != self.device {
            return Err(Error::InvalidArgument {
                name: "devices",
                reason: format!(
                    "worker 0 applies the update, so it runs on the model's device {:?}, not {:?}",
                    self.device, devices[0]
                ),
            });
        }
        self.worker_devices = Some(devices);
        Ok(self)
    }

    /// Ends the worker threads of a data-parallel run, if any run (the next step starts
    /// them again); `fit`, `train_for` and `train_steps` call it when they return, so that
    /// another data-parallel run of the process can start.
    pub fn release_workers(&mut self) {
        #[cfg(feature = "data-parallel")]
        {
            self.workers = None;
        }
    }

    /// Without the `data-parallel` feature there are no workers to run on.
    #[cfg(not(feature = "data-parallel"))]
    pub(in crate::train) fn on_workers(
        &mut self,
        _step: usize,
        _w: f64,
        _rows: &crate::train::batch::Rows,
        _parallel: &DataParallelConfig,
    ) -> Result<crate::train::step::Outcome<B>> {
        Err(without_feature())
    }
}

/// A run with workers in a build without them.
#[cfg(not(feature = "data-parallel"))]
pub(crate) fn without_feature() -> Error {
    invalid_config(
        "TrainConfig",
        "data_parallel",
        "needs the crate's `data-parallel` feature (burn-collective); build with \
         --features data-parallel",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        let config = DataParallelConfig {
            workers: 3,
            ..Default::default()
        };
        assert_eq!(config.shards(512), vec![0..171, 171..342, 342..512]);
        assert_eq!(config.shards(2), vec![0..1, 1..2, 2..2]);
        let two = DataParallelConfig::default();
        assert_eq!(two.shards(512), vec![0..256, 256..512]);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let check = |c: DataParallelConfig, batch| c.check("TrainConfig", batch).unwrap_err();
        let one = DataParallelConfig {
            workers: 1,
            ..Default::default()
        };
        assert!(check(one, 64).to_string().contains("data_parallel.workers"));
        let many = DataParallelConfig {
            workers: 9,
            ..Default::default()
        };
        assert!(check(many, 8)
            .to_string()
            .contains("exceed the batch size 8"));
        let nan = DataParallelConfig {
            timeout_secs: f64::NAN,
            ..Default::default()
        };
        assert!(check(nan, 8).to_string().contains("timeout_secs"));
        let forever = DataParallelConfig {
            timeout_secs: f64::MAX,
            ..Default::default()
        };
        assert!(check(forever, 8).to_string().contains("at most 1e9"));
        let threads = DataParallelConfig {
            threads_per_worker: 1 << 20,
            ..Default::default()
        };
        assert!(check(threads, 8).to_string().contains("threads_per_worker"));
        let none = DataParallelConfig {
            workers: 0,
            ..Default::default()
        };
        assert_eq!(none.shards(3), vec![0..3]);
    }
}
