//! The worker threads of a data-parallel run and the step they share.
//!
//! Each worker is a thread with a replica of the model on its device and a compute pool of
//! its own. For each step the trainer sends every worker its shard of the batch and the
//! current weights; the workers run estimate, loss and backward pass, sum their gradients
//! with burn-collective ([`reduce`](super::reduce)), and answer; worker 0's answer carries
//! the sum. A worker that fails or panics ends the step with an error; one that does not
//! answer within the timeout too. Either way the trainer resets the collective, which ends
//! the other workers' waits inside the all-reduce, and takes the pool down.
//!
//! A reset does not end a wait inside `register` (burn-collective 0.21 keeps those callbacks):
//! if starting a pool fails half-way (a thread that cannot be made, a registration error),
//! the registered workers stay blocked, the pool's drop gives up on them after 10 s, and no
//! new pool starts in that process ([`Error::Worker`] says so).

use super::reduce::ordered_sum;
use super::DataParallelConfig;
use crate::error::{Error, Result};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use crate::train::batch::{estimate, input_divergence, Rows};
use crate::train::config::TrainConfig;
use burn::collective::{finish_collective, register, reset_collective, CollectiveConfig, PeerId};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One data-parallel run at a time per process: burn-collective keeps one set of peers per
/// backend, process-wide.
static COLLECTIVE_BUSY: Mutex<bool> = Mutex::new(false);
static COLLECTIVE_FREED: Condvar = Condvar::new();
/// Set when a worker thread never came back from a failed step: it could still call into the
/// collective later, so no new pool may start in this process.
static ABANDONED: AtomicBool = AtomicBool::new(false);

/// How long a pool being taken down waits for its threads to end.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Holds the process's collective for one pool.
struct CollectiveLease;

impl CollectiveLease {
    fn acquire(timeout: Duration) -> std::result::Result<Self, String> {
        let deadline = deadline_after(timeout);
        let mut busy = COLLECTIVE_BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "another data-parallel run of this process held the workers' collective for \
                     {:.0} s (one data-parallel run at a time per process)",
                    timeout.as_secs_f64()
                ));
            }
            busy = COLLECTIVE_FREED
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy = true;
        Ok(CollectiveLease)
    }
}

impl Drop for CollectiveLease {
    fn drop(&mut self) {
        *COLLECTIVE_BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        COLLECTIVE_FREED.notify_one();
    }
}

/// One worker's part of a step.
pub(crate) struct Job<B: AutodiffBackend, N: AutodiffModule<B>> {
    pub(crate) model: IntegrationFlow<B, N>,
    pub(crate) ema: N::InnerModule,
    pub(crate) config: TrainConfig,
    pub(crate) step: usize,
    pub(crate) w: f64,
    pub(crate) rows: Rows,
    /// The shard's share of the batch (its rows over the batch's): its mean loss times this
    /// is its part of the batch's mean.
    pub(crate) share: f64,
    /// Send the estimates back (for the anchor store's update).
    pub(crate) estimates: bool,
}

/// A worker's answer to a [`Job`].
pub(crate) struct Answer {
    /// The shard's part of the batch's loss.
    pub(crate) loss: f64,
    /// The shard's estimates, row-major, when asked for.
    pub(crate) estimates: Option<Vec<f32>>,
    /// The summed gradients (worker 0 only).
    pub(crate) grads: Option<GradientsParams>,
}

/// What a worker thread says.
enum Report {
    /// Registered with the collective (or not).
    Ready(std::result::Result<(), String>),
    /// Its shard's backward pass is done; it waits in the all-reduce for the others.
    Reducing,
    /// Its answer to a step, or why it has none.
    Done(Result<Answer>),
}

/// The worker threads and their channels.
pub(crate) struct WorkerPool<B: AutodiffBackend, N: AutodiffModule<B>> {
    jobs: Vec<Sender<Job<B, N>>>,
    reports: Receiver<(usize, Report)>,
    threads: Vec<JoinHandle<()>>,
    timeout: Duration,
    _lease: CollectiveLease,
}

impl<B, N> WorkerPool<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// Starts one thread per device and registers them with the collective.
    pub(crate) fn start(
        config: &DataParallelConfig,
        devices: Vec<B::Device>,
        flush_denormals: bool,
        step: usize,
    ) -> Result<Self> {
        let failed = |worker: usize, reason: String| Error::Worker {
            worker,
            step,
            reason,
        };
        let abandoned = || {
            failed(
                0,
                "a worker of an earlier data-parallel run in this process never returned; \
                 start a new process"
                    .into(),
            )
        };
        if ABANDONED.load(Ordering::SeqCst) {
            return Err(abandoned());
        }
        let timeout = Duration::from_secs_f64(config.timeout_secs);
        let lease = CollectiveLease::acquire(timeout).map_err(|reason| failed(0, reason))?;
        // Again, now that the lease is ours: the pool that held it may have left a thread
        // behind (its drop marks that before it frees the lease), which could still call into
        // the collective under a peer id of ours.
        if ABANDONED.load(Ordering::SeqCst) {
            return Err(abandoned());
        }
        let workers = devices.len();
        let threads_each = match config.threads_per_worker {
            0 => (rayon::current_num_threads() / workers).max(1),
            n => n,
        };
        let (report_tx, reports) = mpsc::channel();
        let mut pool = WorkerPool {
            jobs: Vec::with_capacity(workers),
            reports,
            threads: Vec::with_capacity(workers),
            timeout,
            _lease: lease,
        };
        for (worker, device) in devices.into_iter().enumerate() {
            let (job_tx, job_rx) = mpsc::channel::<Job<B, N>>();
            let reports = report_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("integration-flow-worker-{worker}"))
                .spawn(move || {
                    worker_main::<B, N>(
                        worker,
                        workers,
                        device,
                        threads_each,
                        flush_denormals,
                        job_rx,
                        reports,
                    )
                });
            match spawned {
                Ok(thread) => {
                    pool.jobs.push(job_tx);
                    pool.threads.push(thread);
                }
                Err(e) => {
                    pool.fail();
                    return Err(failed(worker, format!("cannot start its thread: {e}")));
                }
            }
        }
        // Only the workers hold senders now: if every thread ends, the wait below ends too.
        drop(report_tx);
        let mut ready = 0;
        let deadline = deadline_after(timeout);
        while ready < workers {
            match pool.next_report(deadline) {
                Ok((_, Report::Ready(Ok(())))) => ready += 1,
                Ok((worker, Report::Ready(Err(reason)))) => {
                    pool.fail();
                    return Err(failed(worker, reason));
                }
                Ok((worker, Report::Done(_) | Report::Reducing)) => {
                    pool.fail();
                    return Err(failed(worker, "answered before it was asked".into()));
                }
                Err(reason) => {
                    pool.fail();
                    return Err(failed(0, reason));
                }
            }
        }
        Ok(pool)
    }

    /// Workers in the pool.
    pub(crate) fn workers(&self) -> usize {
        self.jobs.len()
    }

    /// Runs one step on the workers: `jobs[k]` on worker k. Returns the answers in worker
    /// order, or the first failure (a [`Error::Diverged`] as it is, the rest as
    /// [`Error::Worker`]); after a failure the pool must be dropped.
    pub(crate) fn run(&mut self, step: usize, jobs: Vec<Job<B, N>>) -> Result<Vec<Answer>> {
        let workers = self.workers();
        for (worker, (job, channel)) in jobs.into_iter().zip(&self.jobs).enumerate() {
            if channel.send(job).is_err() {
                self.fail();
                return Err(Error::Worker {
                    worker,
                    step,
                    reason: "its thread has ended".into(),
                });
            }
        }
        let mut answers: Vec<Option<Answer>> = (0..workers).map(|_| None).collect();
        // Which workers reached the all-reduce: on a timeout, the first that did not is the
        // one the others wait for.
        let mut reducing = vec![false; workers];
        let mut failure: Option<Error> = None;
        let deadline = deadline_after(self.timeout);
        let mut answered = 0;
        while answered < workers {
            let (worker, report) = match self.next_report(deadline) {
                Ok(report) => report,
                Err(reason) => {
                    self.fail();
                    let silent = (0..workers)
                        .find(|&k| answers[k].is_none() && !reducing[k])
                        .or_else(|| answers.iter().position(Option::is_none))
                        .unwrap_or(0);
                    return Err(failure.unwrap_or(Error::Worker {
                        worker: silent,
                        step,
                        reason,
                    }));
                }
            };
            match report {
                Report::Reducing => {
                    reducing[worker] = true;
                    continue;
                }
                Report::Done(_) | Report::Ready(_) => answered += 1,
            }
            match report {
                Report::Reducing => {}
                Report::Done(Ok(answer)) => answers[worker] = Some(answer),
                Report::Done(Err(error)) => {
                    if failure.is_none() {
                        // The others may wait inside the all-reduce for this one: end it.
                        reset_collective::<B::InnerBackend>();
                        failure = Some(match error {
                            diverged @ Error::Diverged { .. } => diverged,
                            Error::Worker { reason, .. } => Error::Worker {
                                worker,
                                step,
                                reason,
                            },
                            other => Error::Worker {
                                worker,
                                step,
                                reason: other.to_string(),
                            },
                        });
                    }
                }
                Report::Ready(_) => {}
            }
        }
        if let Some(error) = failure {
            self.fail();
            return Err(error);
        }
        Ok(answers.into_iter().flatten().collect())
    }

    fn next_report(&self, deadline: Instant) -> std::result::Result<(usize, Report), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.reports.recv_timeout(left).map_err(|e| match e {
            RecvTimeoutError::Timeout => format!(
                "no answer within {:.1} s (DataParallelConfig::timeout_secs)",
                self.timeout.as_secs_f64()
            ),
            RecvTimeoutError::Disconnected => "the worker threads have ended".into(),
        })
    }

    /// Ends every wait inside the collective (the threads then end once their senders drop).
    fn fail(&mut self) {
        reset_collective::<B::InnerBackend>();
    }
}

impl<B: AutodiffBackend, N: AutodiffModule<B>> Drop for WorkerPool<B, N> {
    fn drop(&mut self) {
        // Closing the job channels ends the workers' loops.
        self.jobs.clear();
        let deadline = Instant::now() + EXIT_WAIT;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.threads.iter().any(|t| !t.is_finished()) {
            // Left running (detached): it could still call into the collective.
            ABANDONED.store(true, Ordering::SeqCst);
        }
        for thread in self.threads.drain(..).filter(|t| t.is_finished()) {
            // A worker's panic was caught and reported; nothing more to learn here.
            let _ = thread.join();
        }
        // Forget the peers, so that the next pool registers afresh.
        reset_collective::<B::InnerBackend>();
    }
}

/// A worker thread: register, then run jobs until the channel closes.
fn worker_main<B, N>(
    worker: usize,
    workers: usize,
    device: B::Device,
    threads: usize,
    flush_denormals: bool,
    jobs: Receiver<Job<B, N>>,
    reports: Sender<(usize, Report)>,
) where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    if flush_denormals {
        crate::backend::flush_denormals();
    }
    let body = move || {
        let config = CollectiveConfig::default().with_num_devices(workers);
        let registered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            register::<B::InnerBackend>(PeerId::from(worker as u32), device.clone(), config)
        }))
        .map_err(|panic| {
            format!(
                "panicked joining the collective: {}",
                panic_message(panic.as_ref())
            )
        })
        .and_then(|joined| joined.map_err(|e| format!("cannot join the collective: {e:?}")));
        let ok = registered.is_ok();
        if reports.send((worker, Report::Ready(registered))).is_err() || !ok {
            return;
        }
        while let Ok(job) = jobs.recv() {
            let step = job.step;
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_shard(job, worker, workers, &device, || {
                    let _ = reports.send((worker, Report::Reducing));
                })
            }))
            .unwrap_or_else(|panic| {
                Err(Error::Worker {
                    worker,
                    step,
                    reason: format!("panicked: {}", panic_message(panic.as_ref())),
                })
            });
            if reports.send((worker, Report::Done(answer))).is_err() {
                return;
            }
        }
        // Leaving the collective can fail after a reset (the peers were forgotten): harmless.
        let _ = finish_collective::<B::InnerBackend>(PeerId::from(worker as u32));
    };
    match crate::backend::compute_pool(threads, &format!("integration-flow-worker-{worker}")) {
        Some(pool) => pool.install(body),
        None => body(),
    }
}

/// One worker's step: its estimate, loss and backward pass, then the summed gradients.
fn run_shard<B, N>(
    job: Job<B, N>,
    worker: usize,
    workers: usize,
    device: &B::Device,
    reducing: impl FnOnce(),
) -> Result<Answer>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    let Job {
        model,
        ema,
        config,
        step,
        w,
        rows,
        share,
        estimates,
    } = job;
    // A replica with its own autodiff graph: forked parameters are new leaves, with the
    // same parameter ids, so the gradients apply to the trainer's model.
    let model = model.with_net(model.net().clone().fork(device));
    let ema = ema.fork(device);
    let (loss, grads, values) = match rows.len() {
        // A short last batch can leave a worker without rows: it adds nothing to the sum.
        0 => (0.0, GradientsParams::new(), estimates.then(Vec::new)),
        _ => {
            let estimate = estimate(&model, &ema, &config, step, &rows, device)
                .map_err(|e| input_divergence(step, e))?;
            let values = estimates.then(|| {
                estimate
                    .x_hat
                    .clone()
                    .into_data()
                    .iter::<f32>()
                    .collect::<Vec<f32>>()
            });
            let loss = estimate.loss(&config, w, &rows).mul_scalar(share);
            let value: f64 = loss.clone().into_scalar().elem();
            let grads = GradientsParams::from_grads(loss.backward(), model.net());
            (value, grads, values)
        }
    };
    reducing();
    let sum = ordered_sum::<B, N>(model.net(), grads, worker, workers).map_err(|reason| {
        Error::Worker {
            worker,
            step,
            reason,
        }
    })?;
    Ok(Answer {
        loss,
        estimates: values,
        grads: (worker == 0).then_some(sum),
    })
}

/// Now plus `wait` (validated finite and at most 1e9 s, so the sum fits).
fn deadline_after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(1_000_000))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_string(),
        (None, Some(message)) => message.clone(),
        (None, None) => "(no message)".into(),
    }
}
