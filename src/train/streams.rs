//! The seeded random streams of a run.
//!
//! Each stream is a function of (seed, stream, index) alone, so a resumed run draws exactly
//! what an uninterrupted one would, and a checkpoint's "random state" is its position.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// The independent streams of training.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    /// The anchor store: index 0 when the run starts, the epoch when a coupling rebuilds it.
    Anchors = 1,
    /// The order of an epoch's examples; index = epoch.
    Shuffle = 2,
    /// A step's times and noise; index = step.
    Step = 3,
    /// The adversarial critic's initial weights; index 0.
    Critic = 4,
    /// The distribution-matching term's times and noise; index = step.
    Score = 5,
}

/// The generator of `stream` at `index` for a run seeded with `seed`.
pub(crate) fn stream(seed: u64, stream: Stream, index: u64) -> StdRng {
    // SplitMix64 over the three inputs.
    let mut z = seed
        ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}
