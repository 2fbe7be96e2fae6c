//! A vectorisable `e^x` for the fused kernels (SiLU, softmax): `libm`'s `expf` is a scalar call
//! the compiler cannot vectorise.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two so that `x − n·ln 2` is exact enough (Cephes' expf).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// Adding and subtracting 1.5·2²³ rounds an f32 of magnitude below 2²² to the nearest integer,
// without the `round` call that would stop vectorisation on baseline x86-64.
const ROUND: f32 = 12_582_912.0;
// 2²³ + 127: see `exp`.
const EXPONENT_BIAS: f32 = 8_388_735.0;

/// `e^x` without `libm`: `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, Cephes' degree-6 polynomial for
/// `e^r` (relative error about 1e-7), `2^n` written into the exponent bits. Inputs are clamped
/// to [−87, 88] so that `2^n` stays a normal float; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n: n + 127 ∈ [1, 254] (after the clamp) is the exponent field. Adding 2²³ puts that
    // integer in the low mantissa bits, and the shift moves it into the exponent: no
    // float-to-int conversion, whose saturating semantics would not vectorise. A NaN input
    // gives garbage here but NaN in e_r, so the product stays NaN.
    e_r * f32::from_bits((n + EXPONENT_BIAS).to_bits() << 23)
}
