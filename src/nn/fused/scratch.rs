//! Per-thread scratch buffers for the fused kernels' intermediate values (patches, their
//! gradients, channels-last copies), kept between calls.
//!
//! A training step runs each convolution's kernels on every group of images; allocating their
//! buffers afresh each time zero-filled them all (5% of the UNet step was `memset`), although
//! every kernel overwrites what it reads. A buffer taken here holds stale values from an earlier
//! use: the caller writes every value before reading it.

use std::cell::RefCell;

/// Buffers a thread keeps: enough for the most any kernel holds at once (a convolution's
/// backward step holds four, and its Winograd products four more).
const KEPT: usize = 12;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` values, of unspecified content; give it back with [`give`].
///
/// The smallest kept buffer that is long enough, else the longest, grown. Buffers keep their
/// length between uses: growing one zero-fills the new part, so a buffer cut to each request
/// was zero-filled again whenever a later request was longer (2% of the UNet step in memset).
pub(crate) fn take(len: usize) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    let mut buffer = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let fits = (0..pool.len())
            .filter(|&i| pool[i].len() >= len)
            .min_by_key(|&i| pool[i].len());
        let longest = || (0..pool.len()).max_by_key(|&i| pool[i].len());
        fits.or_else(longest)
            .map(|i| pool.swap_remove(i))
            .unwrap_or_default()
    });
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    buffer
}

/// Returns a buffer from [`take`] for later calls on this thread; where the pool is full, the
/// shortest buffer is dropped.
pub(crate) fn give(buffer: Vec<f32>) {
    if buffer.is_empty() {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.push(buffer);
        if pool.len() > KEPT {
            if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].len()) {
                pool.swap_remove(i);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_long_enough_and_the_best_fit_first() {
        let (mut a, long) = (take(10), take(30));
        a.iter_mut().for_each(|v| *v = 1.0);
        give(a);
        give(long);
        // The 10-value buffer serves a request of 4 (the 30-value one stays for longer ones).
        let b = take(4);
        assert_eq!(b.len(), 10);
        assert!(b.iter().all(|&v| v == 1.0), "kept, not zero-filled again");
        let c = take(20);
        assert_eq!(c.len(), 30);
        assert!(take(0).is_empty());
        give(b);
        give(c);
    }
}
