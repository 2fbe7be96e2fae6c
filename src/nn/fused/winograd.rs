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

/// Values added after each plane of a round's transformed tiles (one cache line): planes of a
/// power-of-two size (128 tiles × 32 channels: 16 KiB) started at addresses that fall in the
/// same L1 cache set and alias every 4 KiB, so the 16 stores of a tile's transform (and the 16
/// loads of its output transform) evicted each other.
const PLANE_PAD: usize = 16;

/// Values from the start of one plane of `tiles` tiles of `c` channels to the next.
fn plane_stride(tiles: usize, c: usize) -> usize {
    tiles * c + PLANE_PAD
}

/// Rows of gemm's widest kernel: a round's tile count is a multiple of it, so that the
/// products do not end in narrower kernels (which took an eighth of the time otherwise).
const KERNEL_ROWS: usize = 64;

/// Row `row` of `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]` applied to three vectors: `dst = G[row]·x`,
/// over every element at once (a loop the compiler vectorises).
fn g_row(dst: &mut [f32], [x0, x1, x2]: [&[f32]; 3], row: usize) {
    let terms = dst.iter_mut().zip(x0).zip(x1).zip(x2);
    match row {
        0 => dst.copy_from_slice(x0),
        1 => terms.for_each(|(((d, a), b), c)| *d = 0.5 * (a + b + c)),
        2 => terms.for_each(|(((d, a), b), c)| *d = 0.5 * (a - b + c)),
        _ => dst.copy_from_slice(x2),
    }
}

/// Row `row` of `Gᵀ = [1 ½ ½ 0; 0 ½ −½ 0; 0 ½ ½ 1]` applied to four vectors: `dst = Gᵀ[row]·x`.
fn gt_row(dst: &mut [f32], [x0, x1, x2, x3]: [&[f32]; 4], row: usize) {
    let terms = dst.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3);
    match row {
        0 => terms.for_each(|((((d, a), b), c), _)| *d = a + 0.5 * (b + c)),
        1 => terms.for_each(|((((d, _), b), c), _)| *d = 0.5 * (b - c)),
        _ => terms.for_each(|((((d, _), b), c), e)| *d = 0.5 * (b + c) + e),
    }
}

/// The kernels `[c_out, c_in, 3, 3]` (burn's order) transformed to `[16, c_in, c_out]`, the
/// filter of the convolution: `U = G·g·Gᵀ` with `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`. The taps
/// are first transposed to `[c_in, 3, 3, c_out]`, so that every step runs over the output
/// channels at once (element by element it was 2% of the UNet step, on one thread).
pub(super) fn filter(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let per_e = c_out * c_in;
    let mut taps = vec![0.0f32; 9 * per_e];
    transpose(weight, c_out, 9 * c_in, &mut taps);
    let mut u = vec![0.0f32; 16 * per_e];
    // Per input channel, `G·g` down the kernel's three columns: `[4, 3, c_out]`.
    let mut columns = vec![0.0f32; 12 * c_out];
    for (i, taps) in taps.chunks_exact(9 * c_out).enumerate() {
        let tap = |t: usize| &taps[t * c_out..][..c_out];
        for kx in 0..3 {
            for r in 0..4 {
                let dst = &mut columns[(r * 3 + kx) * c_out..][..c_out];
                g_row(dst, [tap(kx), tap(3 + kx), tap(6 + kx)], r);
            }
        }
        // Then `(G·g)·Gᵀ` along each of its four rows.
        for r in 0..4 {
            let column = |kx: usize| &columns[(r * 3 + kx) * c_out..][..c_out];
            for s in 0..4 {
                let dst = &mut u[(r * 4 + s) * per_e + i * c_out..][..c_out];
                g_row(dst, [column(0), column(1), column(2)], s);
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
        let (sv, sm) = (plane_stride(tiles, ci), plane_stride(tiles, co));
        for ((m, v), u) in m
            .chunks_mut(sm)
            .zip(v.chunks(sv))
            .zip(u.chunks_exact(ci * co))
        {
            let (m, v) = (&mut m[..tiles * co], &v[..tiles * ci]);
            product(m, (false, threads), (tiles, co, ci), v, (ci, 1), u, (co, 1));
        }
        transform_output(m, s, (first, tiles), out, edge);
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
        transform_output_adjoint(dy, s, (first, tiles), m, edge);
        let (sv, sm) = (plane_stride(tiles, ci), plane_stride(tiles, co));
        for ((du, v), m) in du
            .chunks_exact_mut(ci * co)
            .zip(v.chunks(sv))
            .zip(m.chunks(sm))
        {
            let (v, m) = (&v[..tiles * ci], &m[..tiles * co]);
            product(du, (true, threads), (ci, co, tiles), v, (1, ci), m, (co, 1));
        }
    });
}

/// The rounds of tiles of the images `x` ([`Shape::round`] at a time): each round's input
/// transform `v` (`[16, tiles, c_in]`, the planes [`plane_stride`] apart), then
/// `each(first, tiles, v, m, edge)` with room `m` for `[16, tiles, c_out]` (planes as `v`'s)
/// and `edge` for one tile's output pixels. The buffers are taken once.
fn by_rounds(
    x: &[f32],
    s: Shape,
    mut each: impl FnMut(usize, usize, &[f32], &mut [f32], &mut [f32]),
) {
    let (ci, co) = (s.c_in, s.c_out);
    let total = x.len() / (s.h * s.w * ci).max(1) * s.per_image();
    let round = s.round();
    let mut v = scratch::take(16 * plane_stride(round, ci));
    let mut m = scratch::take(16 * plane_stride(round, co));
    let mut edge = scratch::take(4 * co);
    let mut padded = scratch::take(s.padded_len());
    for first in (0..total).step_by(round) {
        let tiles = round.min(total - first);
        let v = &mut v[..16 * plane_stride(tiles, ci)];
        transform_input(x, s, (first, tiles), v, &mut padded);
        let m = &mut m[..16 * plane_stride(tiles, co)];
        each(first, tiles, v, m, &mut edge);
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
/// `du` (`[16, c_in, c_out]`): the adjoint of [`filter`], `dg = Gᵀ·dU·G`, over the output
/// channels at once, then transposed back.
pub(super) fn filter_gradient(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let per_e = c_out * c_in;
    // `[c_in, 3, 3, c_out]`, transposed to burn's order at the end.
    let mut taps = vec![0.0f32; 9 * per_e];
    // Per input channel, `Gᵀ·dU` down the four columns: `[3, 4, c_out]`.
    let mut rows = vec![0.0f32; 12 * c_out];
    for (i, taps) in taps.chunks_exact_mut(9 * c_out).enumerate() {
        let at = |r: usize, s: usize| &du[(r * 4 + s) * per_e + i * c_out..][..c_out];
        for s in 0..4 {
            for ky in 0..3 {
                let dst = &mut rows[(ky * 4 + s) * c_out..][..c_out];
                gt_row(dst, [at(0, s), at(1, s), at(2, s), at(3, s)], ky);
            }
        }
        // Then `(Gᵀ·dU)·G` along each of its three rows.
        for ky in 0..3 {
            let row = |s: usize| &rows[(ky * 4 + s) * c_out..][..c_out];
            for kx in 0..3 {
                let dst = &mut taps[(ky * 3 + kx) * c_out..][..c_out];
                gt_row(dst, [row(0), row(1), row(2), row(3)], kx);
            }
        }
    }
    let mut dw = vec![0.0f32; 9 * per_e];
    transpose(&taps, 9 * c_in, c_out, &mut dw);
    dw
}

/// The adjoint of [`transform_output`]: per tile of `first..first + tiles`, `dM = A·dY·Aᵀ` of
/// its 2×2 pixels of `dy` (channels-last `[images, h, w, c_out]`, zero beyond an odd side),
/// into `m` (`[16, tiles, c_out]`, planes [`plane_stride`] apart). `edge`: room for a tile's
/// pixels (`4·c_out` values at least).
fn transform_output_adjoint(
    dy: &[f32],
    s: Shape,
    (first, tiles): (usize, usize),
    m: &mut [f32],
    edge: &mut [f32],
) {
    let c = s.c_out;
    let (stride, image_len) = (plane_stride(tiles, c), s.h * s.w * c);
    let mut t = 0;
    while t < tiles {
        let (image, ty, tx, run, full) = run_at(s, first + t, tiles - t);
        let dy = &dy[image * image_len..][..image_len];
        let y = 2 * ty;
        if full > 0 {
            let pixels = &dy[(y * s.w + 2 * tx) * c..];
            output_adjoint_run(pixels, s.w * c, full, c, m, (stride, t * c));
        }
        // Tiles that reach past an odd side: their missing pixels are zero.
        for r in full..run {
            let x = 2 * (tx + r);
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
            output_adjoint_run(edge, 2 * c, 1, c, m, (stride, (t + r) * c));
        }
        t += run;
    }
}

/// The run of tiles from tile `t` (counted over the images of a call) along its tile row, at
/// most `left` long: `(image, ty, tx, run, full)`, `full` the run's first tiles whose 2×2
/// output pixels all lie inside the image.
fn run_at(s: Shape, t: usize, left: usize) -> (usize, usize, usize, usize, usize) {
    let (image, ty, tx) = locate(s, t);
    let (_, tw) = s.tiles();
    let run = (tw - tx).min(left);
    let full = match 2 * ty + 1 < s.h {
        true => (s.w / 2).min(tx + run).saturating_sub(tx),
        false => 0,
    };
    (image, ty, tx, run, full)
}

/// Values a run of `run` tiles' 2×2 pixels spans (rows `row` apart, `c` channels): up to the
/// second row's end, `row + 2·run·c`. Saturating, so that no size wraps past a bounds check.
fn pixels_end(row: usize, run: usize, c: usize) -> usize {
    row.saturating_add(run.saturating_mul(2).saturating_mul(c))
}

/// Whether 16 planes `stride` apart hold a run of `run` tiles of `c` channels from `at`, in a
/// buffer of `len` values. Saturating, as [`pixels_end`].
fn fits_planes(len: usize, (stride, at): (usize, usize), run: usize, c: usize) -> bool {
    let end = at.saturating_add(run.saturating_mul(c));
    end <= stride && len >= stride.saturating_mul(15).saturating_add(end)
}

/// `run` tiles side by side, their 2×2 pixels in `src` (rows `row` values apart, the next tile
/// two pixels on), through the adjoint output transform into the planes of `m` (plane `e` at
/// `e·stride`, the run's first tile at `at`).
fn output_adjoint_run(
    src: &[f32],
    row: usize,
    run: usize,
    c: usize,
    m: &mut [f32],
    (stride, at): (usize, usize),
) {
    if run == 0 || c == 0 {
        return;
    }
    assert!(
        src.len() >= pixels_end(row, run, c),
        "output_adjoint_run: pixels"
    );
    assert!(
        fits_planes(m.len(), (stride, at), run, c),
        "output_adjoint_run: planes"
    );
    // SAFETY: the tiles' pixels `src + a·row + (2r + b)·c + k` (a, b < 2, r < run, k < c) lie
    // within `src` and the planes' `m + e·stride + at + r·c + k` (e < 16) within `m` (asserted
    // above); `m` is a distinct `&mut`.
    unsafe { output_adjoint_tiles(src.as_ptr(), row, run, c, m.as_mut_ptr().add(at), stride) }
}

/// `run` tiles of the adjoint output transform over their channels.
///
/// # Safety
/// For `r < run`, `k < c`: `src + a·row + (2r + b)·c + k` is readable (a, b < 2) and
/// `dst + e·stride + r·c + k` writable (e < 16), and the two do not overlap.
#[inline(always)]
unsafe fn output_adjoint_tiles_portable(
    src: *const f32,
    row: usize,
    run: usize,
    c: usize,
    dst: *mut f32,
    stride: usize,
) {
    // Written out: the same loops through a helper taking a closure cost the whole step 2–7%
    // more CPU time.
    let whole = c / LANES * LANES;
    for r in 0..run {
        // SAFETY (all below): offsets within the caller's bounds.
        let (src, dst) = unsafe { (src.add(2 * r * c), dst.add(r * c)) };
        for k in (0..whole).step_by(LANES) {
            unsafe { output_adjoint_block::<LANES>(src.add(k), row, c, dst.add(k), stride) };
        }
        for k in whole..c {
            unsafe { output_adjoint_block::<1>(src.add(k), row, c, dst.add(k), stride) };
        }
    }
}

/// `N` values from `p` into a local array.
///
/// # Safety
/// `p .. p + N` is readable.
#[inline(always)]
unsafe fn load<const N: usize>(p: *const f32) -> [f32; N] {
    let mut v = [0.0f32; N];
    // SAFETY: the caller guarantees `N` readable values; `v` is a distinct local.
    unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), N) };
    v
}

/// `v` to `p .. p + N`.
///
/// # Safety
/// `p .. p + N` is writable.
#[inline(always)]
unsafe fn store<const N: usize>(p: *mut f32, v: &[f32; N]) {
    // SAFETY: the caller guarantees `N` writable values; `v` is a distinct local.
    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, N) };
}

/// Channels `0..N` from `src` of one tile's adjoint output transform, with
/// `A = [1 0; 1 1; 1 −1; 0 −1]`.
///
/// # Safety
/// As [`output_adjoint_tiles_portable`], for one tile and `N` channels.
#[inline(always)]
unsafe fn output_adjoint_block<const N: usize>(
    src: *const f32,
    row: usize,
    c: usize,
    dst: *mut f32,
    stride: usize,
) {
    // SAFETY (loads and stores): within the caller's bounds.
    let y: [[[f32; N]; 2]; 2] =
        std::array::from_fn(|a| std::array::from_fn(|b| unsafe { load(src.add(a * row + b * c)) }));
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
    for (j, (z0j, z1j)) in z[0].iter().zip(&z[1]).enumerate() {
        let mut d = [[0.0f32; N]; 4];
        for l in 0..N {
            let (z0, z1) = (z0j[l], z1j[l]);
            d[0][l] = z0;
            d[1][l] = z0 + z1;
            d[2][l] = z0 - z1;
            d[3][l] = -z1;
        }
        for (i, d) in d.iter().enumerate() {
            unsafe { store(dst.add((i * 4 + j) * stride), d) };
        }
    }
}

/// `V = Bᵀ·d·B` for every 4×4 tile `d` of `first..first + tiles` (rows and columns
/// `2·ty − 1 ..= 2·ty + 2`, zero outside the image), into `v` (`[16, tiles, c]`, planes
/// [`plane_stride`] apart), with `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`. `padded`: room
/// for one image with its border of zeros (`(2·th + 2)·(2·tw + 2)·c` values), where the tiles
/// are read from.
fn transform_input(
    x: &[f32],
    s: Shape,
    (first, tiles): (usize, usize),
    v: &mut [f32],
    padded: &mut [f32],
) {
    let c = s.c_in;
    let (stride, image_len) = (plane_stride(tiles, c), s.h * s.w * c);
    let (_, wp) = s.padded_sides();
    let padded = &mut padded[..s.padded_len()];
    let mut current = None;
    let mut t = 0;
    while t < tiles {
        let (image, ty, tx, run, _) = run_at(s, first + t, tiles - t);
        if current != Some(image) {
            pad(&x[image * image_len..][..image_len], s, padded);
            current = Some(image);
        }
        let src = &padded[(2 * ty * wp + 2 * tx) * c..];
        input_run(src, wp * c, run, c, v, (stride, t * c));
        t += run;
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

/// `run` tiles side by side, their 4×4 pixels in `src` (rows `row` values apart, the next tile
/// two pixels on), through the input transform into the planes of `v` (plane `e` at
/// `e·stride`, the run's first tile at `at`).
fn input_run(
    src: &[f32],
    row: usize,
    run: usize,
    c: usize,
    v: &mut [f32],
    (stride, at): (usize, usize),
) {
    if run == 0 || c == 0 {
        return;
    }
    // The last tile's last row ends at 3·row + (2·(run − 1) + 4)·c.
    let end = row
        .saturating_mul(3)
        .saturating_add((2 * run).saturating_add(2).saturating_mul(c));
    assert!(src.len() >= end, "input_run: pixels");
    assert!(
        fits_planes(v.len(), (stride, at), run, c),
        "input_run: planes"
    );
    // SAFETY: the tiles' pixels `src + i·row + (2r + j)·c + k` (i, j < 4, r < run, k < c) lie
    // within `src` and the planes' `v + e·stride + at + r·c + k` (e < 16) within `v` (asserted
    // above); `v` is a distinct `&mut`.
    unsafe { input_tiles(src.as_ptr(), row, run, c, v.as_mut_ptr().add(at), stride) }
}

/// Channels transformed together: one AVX-512 register, two of AVX2. The values of a block are
/// copied into local arrays first, so that the compiler knows the tile's rows and the 16
/// destinations do not overlap and vectorises the arithmetic.
const LANES: usize = 16;

/// `run` tiles of the input transform over their channels.
///
/// # Safety
/// For `r < run`, `k < c`: `src + i·row + (2r + j)·c + k` is readable (i, j < 4) and
/// `dst + e·stride + r·c + k` writable (e < 16), and the two do not overlap.
#[inline(always)]
unsafe fn input_tiles_portable(
    src: *const f32,
    row: usize,
    run: usize,
    c: usize,
    dst: *mut f32,
    stride: usize,
) {
    // Written out: the same loops through a helper taking a closure cost the whole step 2–7%
    // more CPU time.
    let whole = c / LANES * LANES;
    for r in 0..run {
        // SAFETY (all below): offsets within the caller's bounds.
        let (src, dst) = unsafe { (src.add(2 * r * c), dst.add(r * c)) };
        for k in (0..whole).step_by(LANES) {
            unsafe { input_block::<LANES>(src.add(k), row, c, dst.add(k), stride) };
        }
        for k in whole..c {
            unsafe { input_block::<1>(src.add(k), row, c, dst.add(k), stride) };
        }
    }
}

/// Channels `0..N` from `src` of one tile's input transform.
///
/// # Safety
/// As [`input_tiles_portable`], for one tile and `N` channels.
#[inline(always)]
unsafe fn input_block<const N: usize>(
    src: *const f32,
    row: usize,
    c: usize,
    dst: *mut f32,
    stride: usize,
) {
    // SAFETY (loads and stores): within the caller's bounds.
    let x: [[[f32; N]; 4]; 4] =
        std::array::from_fn(|i| std::array::from_fn(|j| unsafe { load(src.add(i * row + j * c)) }));
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
            unsafe { store(dst.add((i * 4 + j) * stride), v) };
        }
    }
}

/// `Y = Aᵀ·M·A` for every tile of `first..first + tiles`, `Aᵀ = [1 1 1 0; 0 1 −1 −1]`, from `m`
/// (`[16, tiles, c_out]`, planes [`plane_stride`] apart) into the tiles' pixels of `out`
/// (channels-last `[images, h, w, c_out]`; a tile's pixels past an odd side are dropped).
/// `edge`: room for a tile's pixels (`4·c_out` values).
fn transform_output(
    m: &[f32],
    s: Shape,
    (first, tiles): (usize, usize),
    out: &mut [f32],
    edge: &mut [f32],
) {
    let c = s.c_out;
    let (stride, image_len) = (plane_stride(tiles, c), s.h * s.w * c);
    let mut t = 0;
    while t < tiles {
        let (image, ty, tx, run, full) = run_at(s, first + t, tiles - t);
        let out = &mut out[image * image_len..][..image_len];
        let y = 2 * ty;
        if full > 0 {
            let pixels = &mut out[(y * s.w + 2 * tx) * c..];
            output_run(m, (stride, t * c), full, c, pixels, s.w * c);
        }
        for r in full..run {
            let x = 2 * (tx + r);
            let edge = &mut edge[..4 * c];
            output_run(m, (stride, (t + r) * c), 1, c, edge, 2 * c);
            for a in 0..2 {
                for b in 0..2 {
                    if y + a < s.h && x + b < s.w {
                        out[((y + a) * s.w + x + b) * c..][..c]
                            .copy_from_slice(&edge[(a * 2 + b) * c..][..c]);
                    }
                }
            }
        }
        t += run;
    }
}

/// `run` tiles from the planes of `m` (plane `e` at `e·stride`, the run's first tile at `at`)
/// through the output transform into their 2×2 pixels in `dst` (rows `row` values apart, the
/// next tile two pixels on).
fn output_run(
    m: &[f32],
    (stride, at): (usize, usize),
    run: usize,
    c: usize,
    dst: &mut [f32],
    row: usize,
) {
    if run == 0 || c == 0 {
        return;
    }
    assert!(
        fits_planes(m.len(), (stride, at), run, c),
        "output_run: planes"
    );
    assert!(dst.len() >= pixels_end(row, run, c), "output_run: pixels");
    // SAFETY: the planes' `m + e·stride + at + r·c + k` (e < 16, r < run, k < c) lie within `m`
    // and the pixels `dst + a·row + (2r + b)·c + k` (a, b < 2) within `dst` (asserted above);
    // `dst` is a distinct `&mut`.
    unsafe { output_tiles(m.as_ptr().add(at), stride, run, c, dst.as_mut_ptr(), row) }
}

/// `run` tiles of the output transform over their channels.
///
/// # Safety
/// For `r < run`, `k < c`: `src + e·stride + r·c + k` is readable (e < 16) and
/// `dst + a·row + (2r + b)·c + k` writable (a, b < 2), and the two do not overlap.
#[inline(always)]
unsafe fn output_tiles_portable(
    src: *const f32,
    stride: usize,
    run: usize,
    c: usize,
    dst: *mut f32,
    row: usize,
) {
    // Written out: the same loops through a helper taking a closure cost the whole step 2–7%
    // more CPU time.
    let whole = c / LANES * LANES;
    for r in 0..run {
        // SAFETY (all below): offsets within the caller's bounds.
        let (src, dst) = unsafe { (src.add(r * c), dst.add(2 * r * c)) };
        for k in (0..whole).step_by(LANES) {
            unsafe { output_block::<LANES>(src.add(k), stride, c, dst.add(k), row) };
        }
        for k in whole..c {
            unsafe { output_block::<1>(src.add(k), stride, c, dst.add(k), row) };
        }
    }
}

/// Channels `0..N` from `src` of one tile's output transform.
///
/// # Safety
/// As [`output_tiles_portable`], for one tile and `N` channels.
#[inline(always)]
unsafe fn output_block<const N: usize>(
    src: *const f32,
    stride: usize,
    c: usize,
    dst: *mut f32,
    row: usize,
) {
    // SAFETY (loads and stores): within the caller's bounds.
    let x: [[f32; N]; 16] = std::array::from_fn(|e| unsafe { load(src.add(e * stride)) });
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
    for (a, ya) in y.iter().enumerate() {
        for (b, v) in ya.iter().enumerate() {
            unsafe { store(dst.add(a * row + b * c), v) };
        }
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

/// One kernel of the transforms (an `unsafe fn` on raw pointers) compiled for each [`Simd`]
/// level, and its dispatch, with the portable kernel's safety contract.
macro_rules! dispatched {
    ($name:ident, $portable:ident, $avx512:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        /// # Safety
        /// As the portable kernel's.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2")]
        unsafe fn $avx512($($arg: $ty),*) {
            // SAFETY: the caller keeps the portable kernel's contract.
            unsafe { $portable($($arg),*) }
        }

        /// # Safety
        /// As the portable kernel's.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2($($arg: $ty),*) {
            // SAFETY: the caller keeps the portable kernel's contract.
            unsafe { $portable($($arg),*) }
        }

        /// # Safety
        /// As the portable kernel's.
        unsafe fn $name($($arg: $ty),*) {
            match simd() {
                // SAFETY: the CPU has AVX-512F and AVX2 (checked at run time by `simd`); the
                // caller keeps the kernel's contract.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { $avx512($($arg),*) },
                // SAFETY: the CPU has AVX2 (checked at run time by `simd`); as above.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { $avx2($($arg),*) },
                // SAFETY: the caller keeps the kernel's contract.
                #[cfg(not(target_arch = "x86_64"))]
                Simd::Avx512 | Simd::Avx2 => unsafe { $portable($($arg),*) },
                // SAFETY: as above.
                Simd::Baseline => unsafe { $portable($($arg),*) },
            }
        }
    };
}

dispatched!(
    input_tiles,
    input_tiles_portable,
    input_tiles_avx512,
    input_tiles_avx2,
    (src: *const f32, row: usize, run: usize, c: usize, dst: *mut f32, stride: usize)
);
dispatched!(
    output_tiles,
    output_tiles_portable,
    output_tiles_avx512,
    output_tiles_avx2,
    (src: *const f32, stride: usize, run: usize, c: usize, dst: *mut f32, row: usize)
);
dispatched!(
    output_adjoint_tiles,
    output_adjoint_tiles_portable,
    output_adjoint_tiles_avx512,
    output_adjoint_tiles_avx2,
    (src: *const f32, row: usize, run: usize, c: usize, dst: *mut f32, stride: usize)
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
    /// Runs of two tiles, with channels in whole vectors and a remainder.
    #[test]
    fn every_simd_level_transforms_alike() {
        let mut rng = StdRng::seed_from_u64(6);
        let (c, run) = (2 * LANES + 3, 2);
        // Pixels: four rows of `2·run + 2` pixels; planes: 16 of `run·c` values.
        let (row, stride) = ((2 * run + 2) * c, run * c);
        let (pixels, planes) = (draw(&mut rng, 4 * row), draw(&mut rng, 16 * stride));
        let run_level = |level: Simd| {
            let (mut v, mut adjoint) = (vec![0.0f32; 16 * stride], vec![0.0f32; 16 * stride]);
            let mut out = vec![0.0f32; 2 * row];
            let (src, m) = (pixels.as_ptr(), planes.as_ptr());
            let (v_ptr, a_ptr, o_ptr) = (v.as_mut_ptr(), adjoint.as_mut_ptr(), out.as_mut_ptr());
            // SAFETY (every arm): the buffers hold what each kernel reads and writes for a run
            // of `run` tiles with these strides, and the x86 levels run only where the CPU has
            // their features.
            match level {
                Simd::Baseline => unsafe {
                    input_tiles_portable(src, row, run, c, v_ptr, stride);
                    output_tiles_portable(m, stride, run, c, o_ptr, row);
                    output_adjoint_tiles_portable(src, row, run, c, a_ptr, stride);
                },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe {
                    input_tiles_avx2(src, row, run, c, v_ptr, stride);
                    output_tiles_avx2(m, stride, run, c, o_ptr, row);
                    output_adjoint_tiles_avx2(src, row, run, c, a_ptr, stride);
                },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe {
                    input_tiles_avx512(src, row, run, c, v_ptr, stride);
                    output_tiles_avx512(m, stride, run, c, o_ptr, row);
                    output_adjoint_tiles_avx512(src, row, run, c, a_ptr, stride);
                },
                #[cfg(not(target_arch = "x86_64"))]
                Simd::Avx2 | Simd::Avx512 => unreachable!("x86 levels elsewhere"),
            }
            [v, out, adjoint]
        };
        let baseline = run_level(Simd::Baseline);
        assert!(baseline.iter().all(|b| b.iter().any(|&x| x != 0.0)));
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
            for (a, b) in baseline.iter().zip(&run_level(level)) {
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "{x} vs {y}");
                }
            }
        }
    }
}
