//! Concrete backends, one per crate feature. Everything else in the crate is generic over
//! `B: Backend`; this module only names the types a user picks from.
//!
//! | feature | type | device |
//! |---|---|---|
//! | `flex` (default) | [`Flex`](burn::backend::Flex) | CPU, multi-threaded, SIMD |
//! | `ndarray` | [`NdArray`](burn::backend::NdArray) | CPU |
//! | `cuda` | `burn::backend::Cuda` | NVIDIA GPU (driver loaded at run time) |
//!
//! [`Cpu`] is the default CPU backend: flex, chosen because it ran the reference training step
//! faster than ndarray (docs/benchmarks.md); without the `flex` feature it is ndarray.

/// The default CPU backend (inference).
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;
/// The default CPU backend (inference).
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray;

/// The default CPU backend with automatic differentiation (training).
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

/// The flex CPU backend.
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;

/// The ndarray CPU backend.
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray;

/// The CUDA backend (f32).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// The CUDA backend with automatic differentiation.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;

/// Asks the C allocator to keep freed memory for reuse; returns whether it applied.
///
/// A training step frees and allocates tensors of the same few sizes over and over. glibc's
/// `malloc` serves large blocks by `mmap` and returns freed memory at the heap's top to the
/// OS, so each step pays to fault the same pages back in, zeroed: at batch 4096 the page
/// faults took a sixth of the MLP step in a `perf` profile (docs/benchmarks.md). This raises
/// the mmap threshold to its maximum (32 MiB) and the trim threshold to 1 GiB, so that the
/// freed blocks are reused. It is process-wide (it changes `malloc` for the whole program), so
/// the crate does not call it by itself: the examples and benches do, at start-up. On other
/// platforms and C libraries it does nothing and returns `false`.
///
/// ```
/// let applied = integration_flow::backend::tune_allocator();
/// assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets glibc's allocation parameters (it takes the allocator's
        // locks itself); the values are within the documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Makes the calling thread and rayon's worker threads flush subnormal floats to zero (FTZ
/// and DAZ in the x86-64 MXCSR register); returns whether it applied (`false` off x86-64).
///
/// Arithmetic on subnormal numbers (|x| < 1.2e-38 in f32) is many times slower on x86 CPUs,
/// and long trainings produce them: Adam's moment estimates of parameters whose gradients
/// are (near) zero decay by β per step into the subnormal range. In a soak run of the
/// quickstart, steps had become 8× slower after 85,000 steps (docs/reliability.md). Flushing
/// them changes values only below 1.2e-38. [`Trainer`](crate::train::Trainer) calls this at
/// the start of training unless `TrainConfig::flush_denormals` is off. The mode is
/// per-thread and stays set for other work on those threads.
///
/// ```
/// let applied = integration_flow::backend::flush_denormals();
/// assert_eq!(applied, cfg!(target_arch = "x86_64"));
/// ```
pub fn flush_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        set_flush_mode(FLUSH_BITS);
        rayon::broadcast(|_| set_flush_mode(FLUSH_BITS));
        // The calling thread's own pool (`on_pool`), where it has one already; one made later
        // takes the mode from the thread that makes it.
        OWN_POOL.with(|pool| {
            if let Some(Some(pool)) = pool.get() {
                pool.broadcast(|_| set_flush_mode(FLUSH_BITS));
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// FTZ (bit 15) and DAZ (bit 6) of the x86-64 MXCSR register.
#[cfg(target_arch = "x86_64")]
const FLUSH_BITS: u32 = 0x8040;

/// This thread's FTZ and DAZ bits.
fn flush_mode() -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr stores this thread's SSE control register into `csr`.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
        csr & FLUSH_BITS
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// Sets `bits` (of FTZ and DAZ) in this thread's MXCSR; the other bits stay.
fn set_flush_mode(bits: u32) {
    #[cfg(target_arch = "x86_64")]
    {
        if bits == 0 {
            return;
        }
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr read and write only this thread's SSE control register; bits
        // 15 (FTZ) and 6 (DAZ) change only how subnormal values are treated.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= bits & FLUSH_BITS;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bits;
}

thread_local! {
    /// The pool of [`on_pool`] for this thread, made on first use (`None` inside when its
    /// threads could not be made).
    static OWN_POOL: std::cell::OnceCell<Option<rayon::ThreadPool>> =
        const { std::cell::OnceCell::new() };
}

/// `f()` run on a worker of a rayon pool kept for the calling thread, its result returned;
/// the calling thread waits. From a rayon worker already, `f` runs in place.
///
/// The fused CPU kernels split each op over rayon's threads. Called from a thread outside a
/// pool (a program's main thread), every op hands its work to the pool and waits idle, while the
/// serial work between ops (burn's autodiff graph, the optimizer, the kernels' weight
/// transforms) runs with the pool's threads asleep, so that each op wakes them again. Run on a
/// worker, the thread that runs `f` takes part in every op: the UNet training step at batch 64
/// took about 11% less time at two threads (docs/benchmarks.md). [`Trainer`] runs its steps
/// this way.
///
/// The pool is the calling thread's own (as many threads as rayon's global pool, made on first
/// use and kept while the thread lives; its threads take the caller's subnormal mode, see
/// [`flush_denormals`]): `f` holds burn's autodiff lock while it waits for its parallel work,
/// and a worker of a shared pool could, while waiting, take up another thread's `f` and block
/// on that lock for good. So run trainings that go on at once on threads of their own (or
/// pools of their own, as `compare` does), not as items of one `par_iter`: from a worker of a
/// pool, `f` runs in place on that pool.
///
/// [`Trainer`]: crate::train::Trainer
///
/// ```
/// let on_worker = integration_flow::backend::on_pool(|| rayon::current_thread_index().is_some());
/// assert!(on_worker);
/// ```
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    OWN_POOL.with(|pool| {
        let pool = pool.get_or_init(|| {
            // The pool's threads take the caller's subnormal mode (`flush_denormals`).
            let mode = flush_mode();
            rayon::ThreadPoolBuilder::new()
                .num_threads(rayon::current_num_threads())
                .thread_name(|i| format!("integration-flow-{i}"))
                .start_handler(move |_| set_flush_mode(mode))
                .build()
                .ok()
        });
        // Without a pool of its own (the threads could not be made), in place.
        match pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    })
}

/// A compute pool of `threads` threads named `name-i`, with the calling thread's subnormal
/// mode: a data-parallel worker computes on its own, so that workers on one CPU share its
/// cores instead of each using all of them. `None` where the threads cannot be made.
#[cfg(feature = "data-parallel")]
pub(crate) fn compute_pool(threads: usize, name: &str) -> Option<rayon::ThreadPool> {
    let mode = flush_mode();
    let name = name.to_string();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .start_handler(move |_| set_flush_mode(mode))
        .build()
        .ok()
}

/// Whether the NVIDIA driver library (`libcuda.so.1`) can be loaded: the CUDA backend loads it
/// at run time and panics inside burn when it is missing, so programs check first and report a
/// clear error. Off Linux with glibc it cannot tell and returns `true`.
#[cfg(feature = "cuda")]
pub fn cuda_driver_available() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: dlopen with a constant NUL-terminated name; the handle is closed at once.
        unsafe {
            let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY);
            if handle.is_null() {
                return false;
            }
            libc::dlclose(handle);
        }
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

/// The device a module's parameters live on (all on one); the default for a module without
/// parameters.
pub(crate) fn device_of<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: &M,
) -> B::Device {
    module.devices().into_iter().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x·y` for a product below f32's normal range (1e-40: subnormal unless flushed).
    fn tiny_product() -> f32 {
        std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32)
    }

    /// A thread's own pool runs `f` on its workers and takes the thread's subnormal mode, both
    /// when the pool is made after `flush_denormals` and when it already existed.
    #[test]
    fn the_own_pool_runs_on_workers_with_the_callers_subnormal_mode() {
        let flushed = |first_pool: bool| {
            std::thread::spawn(move || {
                if first_pool {
                    on_pool(|| ());
                }
                flush_denormals();
                on_pool(|| {
                    assert!(rayon::current_thread_index().is_some());
                    rayon::broadcast(|_| tiny_product())
                })
            })
            .join()
            .expect("the thread ends")
        };
        for first_pool in [false, true] {
            let products = flushed(first_pool);
            assert_eq!(products.len(), rayon::current_num_threads());
            if cfg!(target_arch = "x86_64") {
                assert!(products.iter().all(|&p| p == 0.0), "{products:?}");
            }
        }
        // Without the flush, the product is the subnormal value.
        let plain = std::thread::spawn(|| on_pool(tiny_product))
            .join()
            .expect("ends");
        assert!(plain > 0.0);
    }
}
