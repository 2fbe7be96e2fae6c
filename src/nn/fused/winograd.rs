//! Winograd's F(2×2, 3×3): a 3×3 convolution at stride 1, padded by one pixel on every side,
//! in 2.25× fewer multiplications than its im2col product.
//!
//! Most of the UNet's convolutions are of this kind, and their im2col products ran at this
//! machine's two-thread `gemm` ceiling (docs/benchmarks.md), so fewer multiplications was what
//! was left to gain. All three products of a training step use the transform: the forward pass,
//! the input gradient (the same convolution of the output gradient with the flipped kernels,
//! [`adjoint_filter`]) and the weight gradient (`dU_e = V_eᵀ·dM_e`, then [`filter_gradient`]). Each 4×4 input tile `d` (overlapping by two
//! pixels) is transformed to `V = Bᵀ·d·B`, each 3×3 kernel to `U = G·g·Gᵀ`; then for each of the
//! 16 positions `e` of a tile one product over the channels, `M_e = V_e · U_e`, and each output
//! tile is `Aᵀ·M·A`, its 2×2 pixels. The transforms only add, subtract and halve, so the result
//! agrees with the direct convolution to a few float roundings.
//!
//! Layouts (all channels-last, the channels each product's contiguous dimension):
//! images `[n, h, w, c]`, transformed kernels `[16, c_in, c_out]`, transformed tiles
//! `[16, tiles, c]`.

use super::flex_ops::product;
use super::scratch;
use super::transpose::transpose;

/// Tiles times channels (in and out) per round of products: the tiles' transforms and the
/// products' results (16 values per tile and channel each) stay within a core's L2 cache.
const TILE_VALUES: usize = 8192;

/// Rows of gemm's widest kernel: a round's tile count is a multiple of it, so that the
/// products do not end in narrower kernels (which took an eighth of the time otherwise).
const KERNEL_ROWS: usize = 64;

/// The kernels `[c_out, c_in, 3, 3]` (burn's order) transformed to `[16, c_in, c_out]`, the
/// filter of the convolution: `U = G·g·Gᵀ` with `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`.
pub(super) fn filter(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let per_e = c_out * c_in;
    let mut u = vec![0.0f32; 16 * per_e];
    // G·x for a column x of three: four values.
    let g = |x: [f32; 3]| {
        [
            x[0],
            0.5 * (x[0] + x[1] + x[2]),
            0.5 * (x[0] - x[1] + x[2]),
            x[2],
        ]
    };
    // Input channels outer, output channels inner: the 16 destinations are written in order.
    for i in 0..c_in {
        for o in 0..c_out {
            let taps = &weight[(o * c_in + i) * 9..][..9];
            let mut columns = [[0.0f32; 3]; 4];
            for kx in 0..3 {
                let column = g([taps[kx], taps[3 + kx], taps[6 + kx]]);
                for (r, value) in column.into_iter().enumerate() {
                    columns[r][kx] = value;
                }
            }
            for (r, row) in columns.into_iter().enumerate() {
                for (s, value) in g(row).into_iter().enumerate() {
                    u[(r * 4 + s) * per_e + i * c_out + o] = value;
                }
            }
        }
    }
    u
}

/// The filter whose convolution of the output gradient is the input gradient, from the
/// filter `u` of [`filter`]: the kernels flipped in both directions and their channels
/// exchanged, `[16, c_out, c_in]`. Flipping a kernel, `g ↦ J·g·J`, only exchanges the first
/// and last rows of `G` (`G·J = P·G`), so the flipped filter at position `(r, s)` is the
/// filter at `(p(r), p(s))`, `p` swapping 0 and 3: one transpose per position.
pub(super) fn adjoint_filter(u: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let per_e = c_out * c_in;
    let mut adjoint = vec![0.0f32; 16 * per_e];
    let p = |r: usize| match r {
        0 => 3,
        3 => 0,
        r => r,
    };
    for (e, dst) in adjoint.chunks_exact_mut(per_e).enumerate() {
        let source = p(e / 4) * 4 + p(e % 4);
        transpose(&u[source * per_e..][..per_e], c_in, c_out, dst);
    }
    adjoint
}

/// Shapes of one call: image size and channels in and out.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
}

impl Shape {
    /// Tiles per image down and across (an odd side's last tile reaches into the padding).
    fn tiles(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }

    /// Rows and columns of one image padded for [`transform_input`]: a pixel of zeros above
    /// and left, one or two below and right (an odd side's extra tile).
    fn padded_sides(&self) -> (usize, usize) {
        let (th, tw) = self.tiles();
        (2 * th + 2, 2 * tw + 2)
    }

    /// Values of one padded image.
    fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded_sides();
        hp * wp * self.c_in
    }

    fn per_image(&self) -> usize {
        let (th, tw) = self.tiles();
        th * tw
    }

    /// Tiles per round of products: about [`TILE_VALUES`] values per channel, a multiple of
    /// [`KERNEL_ROWS`].
    fn round(&self) -> usize {
        let wanted = TILE_VALUES / (self.c_in + self.c_out).max(1);
        (wanted / KERNEL_ROWS).max(1) * KERNEL_ROWS
    }
}

/// `out` (channels-last `[images, h, w, c_out]`) := the convolution of the channels-last
/// images `x` (`[images, h, w, c_in]`) with the transformed filter `u` ([`filter`]), 3×3,
/// stride 1, one pixel of zero padding; no bias. `threads`: the products may use rayon's
/// threads (the caller runs on one group only).
pub(super) fn convolve(x: &[f32], s: Shape, u: &[f32], out: &mut [f32], threads: bool) {
    let (ci, co) = (s.c_in, s.c_out);
    by_rounds(x, s, |first, tiles, v, m, edge| {
        for ((m, v), u) in m
            .chunks_exact_mut(tiles * co)
            .zip(v.chunks_exact(tiles * ci))
            .zip(u.chunks_exact(ci * co))
        {
            product(m, (false, threads), (tiles, co, ci), v, (ci, 1), u, (co, 1));
        }
        transform_output(m, s, first, out, edge);
    });
}

/// `du` (`[16, c_in, c_out]`) += the gradient, with respect to the transformed filter, of the
/// convolution of the channels-last images `x` whose output gradient is `dy` (channels-last
/// `[images, h, w, c_out]`): per position `e`, `dU_e += V_eᵀ · dM_e`, with `V` the input's
/// transform (recomputed, as in [`convolve`]) and `dM` the output transform's adjoint applied
/// to `dy`. [`filter_gradient`] turns the sum into the kernels' gradient.
pub(super) fn accumulate_filter_gradient(
    x: &[f32],
    dy: &[f32],
    s: Shape,
    du: &mut [f32],
    threads: bool,
) {
    let (ci, co) = (s.c_in, s.c_out);
    by_rounds(x, s, |first, tiles, v, m, edge| {
        transform_output_adjoint(dy, s, first, m, edge);
        for ((du, v), m) in du
            .chunks_exact_mut(ci * co)
            .zip(v.chunks_exact(tiles * ci))
            .zip(m.chunks_exact(tiles * co))
        {
            product(du, (true, threads), (ci, co, tiles), v, (1, ci), m, (co, 1));
        }
    });
}

/// The rounds of tiles of the images `x` ([`Shape::round`] at a time): each round's input
/// transform `v` (`[16, tiles, c_in]`), then `each(first, tiles, v, m, edge)` with room `m` for
/// `[16, tiles, c_out]` and `edge` for one tile's output pixels. The buffers are taken once.
fn by_rounds(
    x: &[f32],
    s: Shape,
    mut each: impl FnMut(usize, usize, &[f32], &mut [f32], &mut [f32]),
) {
    let (ci, co) = (s.c_in, s.c_out);
    let total = x.len() / (s.h * s.w * ci).max(1) * s.per_image();
    let round = s.round();
    let mut v = scratch::take(16 * round * ci);
    let mut m = scratch::take(16 * round * co);
    let mut edge = scratch::take(4 * co);
    let mut padded = scratch::take(s.padded_len());
    for first in (0..total).step_by(round) {
        let tiles = round.min(total - first);
        let v = &mut v[..16 * tiles * ci];
        transform_input(x, s, first, v, &mut padded);
        each(first, tiles, v, &mut m[..16 * tiles * co], &mut edge);
    }
    for buffer in [v, m, edge, padded] {
        scratch::give(buffer);
    }
}

/// Where tile `t` (counted over the images of a call) lies: its image and its tile row and
/// column.
fn locate(s: Shape, t: usize) -> (usize, usize, usize) {
    let (_, tw) = s.tiles();
    let per_image = s.per_image();
    let (image, rest) = (t / per_image, t % per_image);
    (image, rest / tw, rest % tw)
}

/// The kernels' gradient `[c_out, c_in, 3, 3]` (burn's order) from the transformed filter's
/// `du` (`[16, c_in, c_out]`): the adjoint of [`filter`], `dg = Gᵀ·dU·G`.
pub(super) fn filter_gradient(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    let per_e = c_out * c_in;
    // Gᵀ·x for a column x of four: three values.
    let gt = |x: [f32; 4]| {
        [
            x[0] + 0.5 * (x[1] + x[2]),
            0.5 * (x[1] - x[2]),
            0.5 * (x[1] + x[2]) + x[3],
        ]
    };
    for i in 0..c_in {
        for o in 0..c_out {
            let at = |r: usize, s: usize| du[(r * 4 + s) * per_e + i * c_out + o];
            // Down the columns first (for each column s), then along the rows.
            let mut rows = [[0.0f32; 4]; 3];
            for s in 0..4 {
                let column = gt([at(0, s), at(1, s), at(2, s), at(3, s)]);
                for (row, value) in rows.iter_mut().zip(column) {
                    row[s] = value;
                }
            }
            let taps = &mut dw[(o * c_in + i) * 9..][..9];
            for (ky, row) in rows.into_iter().enumerate() {
                taps[ky * 3..][..3].copy_from_slice(&gt(row));
            }
        }
    }
    dw
}

/// The adjoint of [`transform_output`]: per tile from `first` on, `dM = A·dY·Aᵀ` of its 2×2
/// pixels of `dy` (channels-last `[images, h, w, c_out]`, zero beyond an odd side), into `m`
/// (`[16, tiles, c_out]`). `edge`: room for a tile's pixels (`4·c_out` values at least).
fn transform_output_adjoint(dy: &[f32], s: Shape, first: usize, m: &mut [f32], edge: &mut [f32]) {
    let c = s.c_out;
    let tiles = m.len() / (16 * c).max(1);
    let mut planes: Vec<&mut [f32]> = m.chunks_exact_mut(tiles * c).collect();
    let image_len = s.h * s.w * c;
    for t in 0..tiles {
        let (image, ty, tx) = locate(s, first + t);
        let dy = &dy[image * image_len..][..image_len];
        let (y, x) = (2 * ty, 2 * tx);
        if y + 1 < s.h && x + 1 < s.w {
            let top = &dy[(y * s.w + x) * c..][..2 * c];
            let bottom = &dy[((y + 1) * s.w + x) * c..][..2 * c];
            output_adjoint_tile(top, bottom, c, &mut planes, t * c);
            continue;
        }
        // A tile that reaches past an odd side: its missing pixels are zero.
        let edge = &mut edge[..4 * c];
        edge.fill(0.0);
        for a in 0..2 {
            for b in 0..2 {
                if y + a < s.h && x + b < s.w {
                    edge[(a * 2 + b) * c..][..c]
                        .copy_from_slice(&dy[((y + a) * s.w + x + b) * c..][..c]);
                }
            }
        }
        let (top, bottom) = edge.split_at(2 * c);
        output_adjoint_tile(top, bottom, c, &mut planes, t * c);
    }
}

/// One tile's adjoint output transform over its channels.
#[inline(always)]
fn output_adjoint_tile_portable(
    top: &[f32],
    bottom: &[f32],
    c: usize,
    planes: &mut [&mut [f32]],
    at: usize,
) {
    // Written out: the same loops through a helper taking a closure cost the whole step 2–7%
    // more CPU time.
    let whole = c / LANES * LANES;
    for k in (0..whole).step_by(LANES) {
        output_adjoint_block::<LANES>([top, bottom], c, k, planes, at);
    }
    for k in whole..c {
        output_adjoint_block::<1>([top, bottom], c, k, planes, at);
    }
}

/// Channels `k..k + N` of one tile's adjoint output transform, with
/// `A = [1 0; 1 1; 1 −1; 0 −1]`.
#[inline(always)]
fn output_adjoint_block<const N: usize>(
    rows: [&[f32]; 2],
    c: usize,
    k: usize,
    planes: &mut [&mut [f32]],
    at: usize,
) {
    let mut y = [[[0.0f32; N]; 2]; 2];
    for (ya, row) in y.iter_mut().zip(rows) {
        ya[0].copy_from_slice(&row[k..][..N]);
        ya[1].copy_from_slice(&row[c + k..][..N]);
    }
    // Along the rows: dY·Aᵀ, four values from each row's two.
    let mut z = [[[0.0f32; N]; 4]; 2];
    for (za, ya) in z.iter_mut().zip(&y) {
        for l in 0..N {
            let (y0, y1) = (ya[0][l], ya[1][l]);
            za[0][l] = y0;
            za[1][l] = y0 + y1;
            za[2][l] = y0 - y1;
            za[3][l] = -y1;
        }
    }
    // Down the columns: A·(dY·Aᵀ).
    for j in 0..4 {
        let mut d = [[0.0f32; N]; 4];
        for l in 0..N {
            let (z0, z1) = (z[0][j][l], z[1][j][l]);
            d[0][l] = z0;
            d[1][l] = z0 + z1;
            d[2][l] = z0 - z1;
            d[3][l] = -z1;
        }
        for (i, d) in d.iter().enumerate() {
            planes[i * 4 + j][at + k..][..N].copy_from_slice(d);
        }
    }
}

/// `V = Bᵀ·d·B` for every 4×4 tile `d` (rows and columns `2·ty − 1 ..= 2·ty + 2`, zero
/// outside the image) from tile `first` on, into `v` (`[16, tiles, c]`), with
/// `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`. `padded`: room for one image with its
/// border of zeros (`(2·th + 2)·(2·tw + 2)·c` values), where the tiles are read from.
fn transform_input(x: &[f32], s: Shape, first: usize, v: &mut [f32], padded: &mut [f32]) {
    let c = s.c_in;
    let tiles = v.len() / (16 * c).max(1);
    let mut planes: Vec<&mut [f32]> = v.chunks_exact_mut(tiles * c).collect();
    let image_len = s.h * s.w * c;
    let (_, wp) = s.padded_sides();
    let padded = &mut padded[..s.padded_len()];
    let mut current = None;
    for t in 0..tiles {
        let (image, ty, tx) = locate(s, first + t);
        if current != Some(image) {
            pad(&x[image * image_len..][..image_len], s, padded);
            current = Some(image);
        }
        let row = |i: usize| &padded[((2 * ty + i) * wp + 2 * tx) * c..][..4 * c];
        input_tile([row(0), row(1), row(2), row(3)], c, &mut planes, t * c);
    }
}

/// One image (`[h, w, c]`) into `padded` ([`Shape::padded_sides`]) with a border of zeros.
fn pad(image: &[f32], s: Shape, padded: &mut [f32]) {
    let c = s.c_in;
    let (_, wp) = s.padded_sides();
    for (y, row) in padded.chunks_exact_mut(wp * c).enumerate() {
        match y.checked_sub(1).filter(|&iy| iy < s.h) {
            Some(iy) => {
                row[..c].fill(0.0);
                row[c..(s.w + 1) * c].copy_from_slice(&image[iy * s.w * c..][..s.w * c]);
                row[(s.w + 1) * c..].fill(0.0);
            }
            None => row.fill(0.0),
        }
    }
}

/// Channels transformed together: one AVX-512 register, two of AVX2. The values of a block are
/// copied into local arrays first, so that the compiler knows the tile's rows and the 16
/// destinations do not overlap and vectorises the arithmetic.
const LANES: usize = 16;

/// One tile's input transform over its channels: rows `d` of four pixels each, into
/// `planes[e][at..at + c]`.
#[inline(always)]
fn input_tile_portable(d: [&[f32]; 4], c: usize, planes: &mut [&mut [f32]], at: usize) {
    // Written out: the same loops through a helper taking a closure cost the whole step 2–7%
    // more CPU time.
    let whole = c / LANES * LANES;
    for k in (0..whole).step_by(LANES) {
        input_block::<LANES>(&d, c, k, planes, at);
    }
    for k in whole..c {
        input_block::<1>(&d, c, k, planes, at);
    }
}

/// Channels `k..k + N` of one tile's input transform.
#[inline(always)]
fn input_block<const N: usize>(
    d: &[&[f32]; 4],
    c: usize,
    k: usize,
    planes: &mut [&mut [f32]],
    at: usize,
) {
    let mut x = [[[0.0f32; N]; 4]; 4];
    for (xi, row) in x.iter_mut().zip(d) {
        for (j, xij) in xi.iter_mut().enumerate() {
            xij.copy_from_slice(&row[j * c + k..][..N]);
        }
    }
    // Down the columns: Bᵀ·d.
    let mut b = [[[0.0f32; N]; 4]; 4];
    for j in 0..4 {
        for l in 0..N {
            let (d0, d1, d2, d3) = (x[0][j][l], x[1][j][l], x[2][j][l], x[3][j][l]);
            b[0][j][l] = d0 - d2;
            b[1][j][l] = d1 + d2;
            b[2][j][l] = d2 - d1;
            b[3][j][l] = d1 - d3;
        }
    }
    // Along the rows: (Bᵀ·d)·B, stored per position.
    for (i, b) in b.iter().enumerate() {
        let mut v = [[0.0f32; N]; 4];
        for l in 0..N {
            v[0][l] = b[0][l] - b[2][l];
            v[1][l] = b[1][l] + b[2][l];
            v[2][l] = b[2][l] - b[1][l];
            v[3][l] = b[1][l] - b[3][l];
        }
        for (j, v) in v.iter().enumerate() {
            planes[i * 4 + j][at + k..][..N].copy_from_slice(v);
        }
    }
}

/// `Y = Aᵀ·M·A` for every tile from `first` on, `Aᵀ = [1 1 1 0; 0 1 −1 −1]`, from `m`
/// (`[16, tiles, c_out]`) into the tiles' pixels of `out` (channels-last
/// `[images, h, w, c_out]`; a tile's pixels past an odd side are dropped). `edge`: room for a
/// tile's pixels (`4·c_out` values).
fn transform_output(m: &[f32], s: Shape, first: usize, out: &mut [f32], edge: &mut [f32]) {
    let c = s.c_out;
    let tiles = m.len() / (16 * c).max(1);
    let planes: Vec<&[f32]> = m.chunks_exact(tiles * c).collect();
    let image_len = s.h * s.w * c;
    for t in 0..tiles {
        let (image, ty, tx) = locate(s, first + t);
        let out = &mut out[image * image_len..][..image_len];
        let src: [&[f32]; 16] = std::array::from_fn(|e| &planes[e][t * c..][..c]);
        let (y, x) = (2 * ty, 2 * tx);
        if y + 1 < s.h && x + 1 < s.w {
            let (upper, lower) = out.split_at_mut(((y + 1) * s.w + x) * c);
            let top = &mut upper[(y * s.w + x) * c..][..2 * c];
            output_tile(src, c, top, &mut lower[..2 * c]);
            continue;
        }
        let edge = &mut edge[..4 * c];
        let (top, bottom) = edge.split_at_mut(2 * c);
        output_tile(src, c, top, bottom);
        for a in 0..2 {
            for b in 0..2 {
                if y + a < s.h && x + b < s.w {
                    out[((y + a) * s.w + x + b) * c..][..c]
                        .copy_from_slice(&edge[(a * 2 + b) * c..][..c]);
                }
            }
        }
    }
}

/// One tile's output transform: its top two and bottom two pixels (`2·c` values each).
#[inline(always)]
fn output_tile_portable(m: [&[f32]; 16], c: usize, top: &mut [f32], bottom: &mut [f32]) {
    // Written out: the same loops through a helper taking a closure cost the whole step 2–7%
    // more CPU time.
    let whole = c / LANES * LANES;
    for k in (0..whole).step_by(LANES) {
        output_block::<LANES>(&m, c, k, top, bottom);
    }
    for k in whole..c {
        output_block::<1>(&m, c, k, top, bottom);
    }
}

/// Channels `k..k + N` of one tile's output transform.
#[inline(always)]
fn output_block<const N: usize>(
    m: &[&[f32]; 16],
    c: usize,
    k: usize,
    top: &mut [f32],
    bottom: &mut [f32],
) {
    let mut x = [[0.0f32; N]; 16];
    for (xe, plane) in x.iter_mut().zip(m) {
        xe.copy_from_slice(&plane[k..][..N]);
    }
    // Aᵀ·M down the columns, then along the rows.
    let mut s = [[[0.0f32; N]; 4]; 2];
    for j in 0..4 {
        for l in 0..N {
            let (m0, m1, m2, m3) = (x[j][l], x[4 + j][l], x[8 + j][l], x[12 + j][l]);
            s[0][j][l] = m0 + m1 + m2;
            s[1][j][l] = m1 - m2 - m3;
        }
    }
    let mut y = [[[0.0f32; N]; 2]; 2];
    for (yi, si) in y.iter_mut().zip(&s) {
        for l in 0..N {
            yi[0][l] = si[0][l] + si[1][l] + si[2][l];
            yi[1][l] = si[1][l] - si[2][l] - si[3][l];
        }
    }
    for (row, yi) in [top, bottom].into_iter().zip(&y) {
        row[k..][..N].copy_from_slice(&yi[0]);
        row[c + k..][..N].copy_from_slice(&yi[1]);
    }
}

/// The widest vector unit this CPU has that the transforms are compiled for: the transforms
/// are the same loops, compiled three times (AVX-512, AVX2, the baseline) and chosen at run
/// time.
#[derive(Clone, Copy)]
enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx2") {
            return Simd::Avx512;
        }
        if has!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Baseline
}

/// One function of the transforms compiled for each [`Simd`] level, and its dispatch.
macro_rules! dispatched {
    ($name:ident, $portable:ident, $avx512:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2")]
        fn $avx512($($arg: $ty),*) {
            $portable($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx2($($arg: $ty),*) {
            $portable($($arg),*)
        }

        fn $name($($arg: $ty),*) {
            match simd() {
                // SAFETY: the CPU has AVX-512F and AVX2 (checked at run time by `simd`).
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { $avx512($($arg),*) },
                // SAFETY: the CPU has AVX2 (checked at run time by `simd`).
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { $avx2($($arg),*) },
                #[cfg(not(target_arch = "x86_64"))]
                Simd::Avx512 | Simd::Avx2 => $portable($($arg),*),
                Simd::Baseline => $portable($($arg),*),
            }
        }
    };
}

dispatched!(
    input_tile,
    input_tile_portable,
    input_tile_avx512,
    input_tile_avx2,
    (d: [&[f32]; 4], c: usize, planes: &mut [&mut [f32]], at: usize)
);
dispatched!(
    output_tile,
    output_tile_portable,
    output_tile_avx512,
    output_tile_avx2,
    (m: [&[f32]; 16], c: usize, top: &mut [f32], bottom: &mut [f32])
);
dispatched!(
    output_adjoint_tile,
    output_adjoint_tile_portable,
    output_adjoint_tile_avx512,
    output_adjoint_tile_avx2,
    (top: &[f32], bottom: &[f32], c: usize, planes: &mut [&mut [f32]], at: usize)
);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// `len` values uniform in [−1, 1).
    fn draw(rng: &mut StdRng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// ⟨a, b⟩ in f64.
    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    /// The direct convolution, channels-last, padding 1, in f64.
    fn direct(x: &[f32], s: Shape, weight: &[f32]) -> Vec<f64> {
        let n = x.len() / (s.h * s.w * s.c_in);
        let mut out = vec![0.0f64; n * s.h * s.w * s.c_out];
        for img in 0..n {
            for y in 0..s.h {
                for xo in 0..s.w {
                    for o in 0..s.c_out {
                        let mut acc = 0.0f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (y + ky, xo + kx);
                                if iy == 0 || ix == 0 || iy > s.h || ix > s.w {
                                    continue;
                                }
                                let (iy, ix) = (iy - 1, ix - 1);
                                for i in 0..s.c_in {
                                    let xv = x[((img * s.h + iy) * s.w + ix) * s.c_in + i];
                                    let wv = weight[((o * s.c_in + i) * 3 + ky) * 3 + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((img * s.h + y) * s.w + xo) * s.c_out + o] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn agrees_with_the_direct_convolution_on_odd_and_even_sides() {
        let mut rng = StdRng::seed_from_u64(3);
        for (n, h, w, c_in, c_out) in [
            (1, 1, 1, 1, 1),
            (2, 3, 5, 3, 2),
            (3, 7, 7, 9, 17),
            (2, 4, 6, 16, 8),
            (5, 14, 14, 8, 4),
            (1, 2, 9, 33, 5),
        ] {
            let s = Shape { h, w, c_in, c_out };
            let x = draw(&mut rng, n * h * w * c_in);
            let weight = draw(&mut rng, c_out * 9 * c_in);
            let mut out = vec![f32::NAN; n * h * w * c_out];
            convolve(&x, s, &filter(&weight, c_out, c_in), &mut out, false);
            for (a, b) in out.iter().zip(direct(&x, s, &weight)) {
                assert!(
                    (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{s:?}: {a} vs {b}"
                );
            }
        }
    }

    /// The filter gradient is the adjoint of the convolution in the weights:
    /// ⟨conv_w(x), dy⟩ = ⟨w, dW(x, dy)⟩, on an odd and an even size.
    #[test]
    fn the_filter_gradient_is_the_adjoint_in_the_weights() {
        let mut rng = StdRng::seed_from_u64(5);
        for (n, h, w, c_in, c_out) in [(3, 7, 5, 18, 3), (2, 4, 4, 3, 20)] {
            let (x, weight, dy) = (
                draw(&mut rng, n * h * w * c_in),
                draw(&mut rng, c_out * 9 * c_in),
                draw(&mut rng, n * h * w * c_out),
            );
            let s = Shape { h, w, c_in, c_out };
            let mut y = vec![0.0; dy.len()];
            convolve(&x, s, &filter(&weight, c_out, c_in), &mut y, false);
            let mut du = vec![0.0; 16 * c_in * c_out];
            accumulate_filter_gradient(&x, &dy, s, &mut du, false);
            let dw = filter_gradient(&du, c_out, c_in);
            let (lhs, rhs) = (dot(&y, &dy), dot(&weight, &dw));
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    /// The adjoint filter's convolution of `dy` is the input gradient: ⟨conv(x), dy⟩ =
    /// ⟨x, conv_adjoint(dy)⟩.
    #[test]
    fn the_adjoint_filter_gives_the_input_gradient() {
        let mut rng = StdRng::seed_from_u64(4);
        let (n, h, w, c_in, c_out) = (2, 5, 6, 7, 3);
        let (x, weight, dy) = (
            draw(&mut rng, n * h * w * c_in),
            draw(&mut rng, c_out * 9 * c_in),
            draw(&mut rng, n * h * w * c_out),
        );
        let forward = Shape { h, w, c_in, c_out };
        let mut y = vec![0.0; dy.len()];
        convolve(&x, forward, &filter(&weight, c_out, c_in), &mut y, false);
        let back = Shape {
            h,
            w,
            c_in: c_out,
            c_out: c_in,
        };
        let mut dx = vec![0.0; x.len()];
        let adjoint = adjoint_filter(&filter(&weight, c_out, c_in), c_out, c_in);
        convolve(&dy, back, &adjoint, &mut dx, false);
        let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    /// Every compiled form of the transforms (the baseline's, AVX2's and AVX-512's where the
    /// CPU has them) gives the same values: another machine may take another path than this.
    #[test]
    fn every_simd_level_transforms_alike() {
        let mut rng = StdRng::seed_from_u64(6);
        let c = 2 * LANES + 3;
        let (rows, m) = (draw(&mut rng, 16 * c), draw(&mut rng, 16 * c));
        let run = |level: Simd| {
            let d: [&[f32]; 4] = std::array::from_fn(|i| &rows[i * 4 * c..][..4 * c]);
            let src: [&[f32]; 16] = std::array::from_fn(|e| &m[e * c..][..c]);
            let (upper, lower) = (&rows[..2 * c], &rows[2 * c..4 * c]);
            let (mut v, mut adjoint) = (vec![0.0f32; 16 * c], vec![0.0f32; 16 * c]);
            let (mut top, mut bottom) = (vec![0.0f32; 2 * c], vec![0.0f32; 2 * c]);
            {
                let mut planes: Vec<&mut [f32]> = v.chunks_exact_mut(c).collect();
                let mut adjoint_planes: Vec<&mut [f32]> = adjoint.chunks_exact_mut(c).collect();
                let (planes, adjoint_planes) = (&mut planes[..], &mut adjoint_planes[..]);
                match level {
                    Simd::Baseline => {
                        input_tile_portable(d, c, planes, 0);
                        output_tile_portable(src, c, &mut top, &mut bottom);
                        output_adjoint_tile_portable(upper, lower, c, adjoint_planes, 0);
                    }
                    // SAFETY (both arms): called only where the CPU has the level's features.
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2 => unsafe {
                        input_tile_avx2(d, c, planes, 0);
                        output_tile_avx2(src, c, &mut top, &mut bottom);
                        output_adjoint_tile_avx2(upper, lower, c, adjoint_planes, 0);
                    },
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 => unsafe {
                        input_tile_avx512(d, c, planes, 0);
                        output_tile_avx512(src, c, &mut top, &mut bottom);
                        output_adjoint_tile_avx512(upper, lower, c, adjoint_planes, 0);
                    },
                    #[cfg(not(target_arch = "x86_64"))]
                    Simd::Avx2 | Simd::Avx512 => unreachable!("x86 levels elsewhere"),
                }
            }
            [v, top, bottom, adjoint]
        };
        let baseline = run(Simd::Baseline);
        #[allow(unused_mut)]
        let mut levels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") {
                levels.push(Simd::Avx2);
            }
            if has!("avx512f") && has!("avx2") {
                levels.push(Simd::Avx512);
            }
        }
        for level in levels {
            for (a, b) in baseline.iter().zip(&run(level)) {
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "{x} vs {y}");
                }
            }
        }
    }
}
