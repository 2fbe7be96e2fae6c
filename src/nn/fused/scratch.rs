//! Per-thread scratch buffers for the fused kernels' intermediate values (patches, their
//! gradients, channels-last copies), kept between calls.
//!
//! A training step runs each convolution's kernels on every group of images; allocating their
//! buffers afresh each time zero-filled them all (5% of the UNet step was `memset`), although
//! every kernel overwrites what it reads. A buffer taken here holds stale values from an earlier
//! use: the caller writes every value before reading it.

use std::cell::RefCell;

/// Buffers a thread keeps: enough for the most any kernel holds at once.
const KEPT: usize = 6;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` values, of unspecified content; give it back with [`give`].
pub(crate) fn take(len: usize) -> Vec<f32> {
    let mut buffer = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        // The largest kept buffer, so that small requests do not use up the large ones.
        let best = (0..pool.len()).max_by_key(|&i| pool[i].capacity());
        best.map(|i| pool.swap_remove(i)).unwrap_or_default()
    });
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    buffer.truncate(len);
    buffer
}

/// Returns a buffer from [`take`] for later calls on this thread.
pub(crate) fn give(buffer: Vec<f32>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < KEPT {
            pool.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_the_asked_length() {
        let mut a = take(10);
        a.iter_mut().for_each(|v| *v = 1.0);
        give(a);
        let b = take(4);
        assert_eq!(b.len(), 4);
        let c = take(20);
        assert_eq!(c.len(), 20);
        give(b);
        give(c);
    }
}
