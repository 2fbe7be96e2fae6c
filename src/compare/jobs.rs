//! Independent training-and-measuring jobs spread over the machine's cores.
//!
//! A 3×256 MLP step at batch 512 does not get faster with a second rayon thread on this
//! machine (8.9 ms with one, 8.8 ms with two; docs/benchmarks.md), so running two jobs side
//! by side, each on a one-thread pool of its own, doubles the throughput of a study.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The worker count to use for `requested` (0 = one per available core).
pub fn worker_count(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `job` on every element of `inputs` with `workers` threads (each with its own rayon
/// pool of `cores / workers` threads) and returns the outputs in input order. Stops handing
/// out new inputs after the first error, which it returns.
pub fn run_jobs<I, O, F>(inputs: &[I], workers: usize, job: F) -> Result<Vec<O>>
where
    I: Sync,
    O: Send,
    F: Fn(&I) -> Result<O> + Sync,
{
    let workers = worker_count(workers).min(inputs.len().max(1));
    if workers <= 1 {
        return inputs.iter().map(&job).collect();
    }
    let threads_each = (worker_count(0) / workers).max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outputs: Mutex<Vec<Option<Result<O>>>> =
        Mutex::new((0..inputs.len()).map(|_| None).collect());
    let pool_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let pool = match rayon::ThreadPoolBuilder::new()
                    .num_threads(threads_each)
                    .build()
                {
                    Ok(pool) => pool,
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        *lock(&pool_error) = Some(Error::InvalidArgument {
                            name: "workers",
                            reason: format!("cannot start a thread pool: {e}"),
                        });
                        return;
                    }
                };
                pool.install(|| loop {
                    if failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(input) = inputs.get(i) else { return };
                    let output = job(input);
                    if output.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    lock(&outputs)[i] = Some(output);
                });
            });
        }
    });
    if let Some(e) = lock(&pool_error).take() {
        return Err(e);
    }
    let outputs = std::mem::take(&mut *lock(&outputs));
    // The first error in input order wins; without errors every slot is filled.
    let mut done = Vec::with_capacity(outputs.len());
    for output in outputs {
        match output {
            Some(Ok(o)) => done.push(o),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if done.len() != inputs.len() {
        return Err(Error::InvalidArgument {
            name: "jobs",
            reason: "a job stopped without a result".into(),
        });
    }
    Ok(done)
}

/// Locks `m`, taking the data even if another worker panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_keep_input_order_with_several_workers() {
        let inputs: Vec<u64> = (0..37).collect();
        let out = run_jobs(&inputs, 3, |&i| Ok(i * i)).unwrap();
        assert_eq!(out, inputs.iter().map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_is_returned() {
        let inputs: Vec<u64> = (0..10).collect();
        let out = run_jobs(&inputs, 2, |&i| {
            if i == 4 {
                Err(Error::InvalidArgument {
                    name: "i",
                    reason: "four".into(),
                })
            } else {
                Ok(i)
            }
        });
        assert!(matches!(out, Err(Error::InvalidArgument { name: "i", .. })));
    }
}
