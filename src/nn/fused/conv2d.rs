//! A 2-D convolution with a backward pass of its own on the default CPU backend.
//!
//! burn-flex 0.21 has no convolution backward: burn's default computes the input gradient as a
//! transposed convolution, which flex runs one batch element at a time on one thread, and the
//! weight gradient through dimension swaps that copy element by element. In a `perf` profile of
//! the UNet training step those copies and the transposed convolution took more time than all
//! the matrix products (docs/benchmarks.md). Here the forward pass and both gradients are
//! matrix products through `gemm` on im2col tiles in channels-last order, so every product has
//! the channels as its contiguous dimension and the pixels of several images as its long one:
//!
//! - forward: `out = cols · Wᵀ`, `cols` the `[pixels, kh·kw·c_in]` patches of a tile of images;
//! - input gradient: `dcols = dout · W`, scattered back onto the input's pixels (col2im);
//! - weight gradient: `dW = doutᵀ · cols`, summed over groups of images in a fixed order (the
//!   same result for a given batch on any machine with up to four threads, where the groups
//!   are eight; more threads make more groups); the bias gradient is a sum over pixels.
//!
//! The 3×3 convolutions at stride 1 that keep the image size (most of the UNet's) take
//! Winograd's F(2×2, 3×3) instead for all three products ([`super::winograd`]): 2.25× fewer
//! multiplications, the same result to a few float roundings.
//!
//! Images are split into groups of whole tiles, one rayon task per group,
//! each with its buffers allocated once. Other backends, grouped or dilated convolutions and
//! padding other than explicit or valid take burn's `Conv2d::forward`.

use super::layout::{relayout, Layout};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;

/// `layer.forward(x)` for a burn [`Conv2d`] layer and `x` of shape `[n, c_in, h, w]`. On
/// `Flex`/`Autodiff<Flex>` with `f32` data, a bias, one group, no dilation and explicit (or no)
/// padding it is one op with its own backward step; elsewhere burn's convolution.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::nn::conv::Conv2dConfig;
/// use burn::nn::PaddingConfig2d;
/// use burn::tensor::{Distribution, Tensor};
/// use integration_flow::backend::Cpu;
/// use integration_flow::nn::conv2d;
/// let device = Default::default();
/// let layer = Conv2dConfig::new([3, 4], [3, 3])
///     .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
///     .init::<Cpu>(&device);
/// let x = Tensor::<Cpu, 4>::random([2, 3, 5, 6], Distribution::Normal(0.0, 1.0), &device);
/// let fast = conv2d(&layer, x.clone());
/// assert_eq!(fast.dims(), [2, 4, 5, 6]);
/// assert!((fast - layer.forward(x)).abs().max().into_scalar() < 1e-4);
/// # }
/// ```
pub fn conv2d<B: Backend>(layer: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    conv2d_in(layer, x, Layout::ChannelsFirst)
}

/// [`conv2d`] of feature maps in `layout`: `x` `[n, c_in, h, w]` or `[n, h, w, c_in]`, the
/// output in the same layout. Channels-last maps need no transposes on flex; elsewhere they
/// are permuted around burn's convolution.
pub(crate) fn conv2d_in<B: Backend>(
    layer: &Conv2d<B>,
    x: Tensor<B, 4>,
    layout: Layout,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match (&layer.bias, flex::explicit_padding(&layer.padding)) {
        (Some(bias), Some(padding))
            if super::fused_kernels() && layer.groups == 1 && layer.dilation == [1, 1] =>
        {
            let (weight, bias) = (layer.weight.val(), bias.val());
            match flex::convolve(x, weight, bias, layer.stride, padding, layout) {
                Ok(y) => return y,
                Err(x) => x,
            }
        }
        _ => x,
    };
    match layout {
        Layout::ChannelsFirst => layer.forward(x),
        Layout::ChannelsLast => {
            let y = layer.forward(relayout(x, layout, Layout::ChannelsFirst));
            relayout(y, Layout::ChannelsFirst, layout)
        }
    }
}

/// A linear layer applied at every pixel of `x` (`[n, c_in, h, w]` → `[n, c_out, h, w]`): a 1×1
/// convolution with the layer's transposed weight, so that channels-first feature maps need no
/// transposed copy (the UNet's attention projections).
pub(crate) fn pixelwise<B: Backend>(layer: &Linear<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let weight = layer.weight.val();
    let [c_in, c_out] = weight.dims();
    let weight = weight.transpose().reshape([c_out, c_in, 1, 1]);
    let bias = layer.bias.as_ref().map(|b| b.val());
    #[cfg(feature = "flex")]
    let x = match &bias {
        Some(bias) if super::fused_kernels() => {
            let layout = Layout::ChannelsFirst;
            match flex::convolve(x, weight.clone(), bias.clone(), [1, 1], [0; 4], layout) {
                Ok(y) => return y,
                Err(x) => x,
            }
        }
        _ => x,
    };
    let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// The kernels on plain slices: the im2col layout, the tiling and the three products.
#[cfg(feature = "flex")]
mod kernels {
    use super::super::flex_ops::{par_vec_map, product, sum};
    use super::super::layout::Layout;
    use super::super::scratch;
    use super::super::transpose::transpose;
    use super::super::winograd;
    use rayon::prelude::*;

    /// Output pixels (rows of one product) a tile aims at: enough rows for gemm's kernels to run
    /// at speed, few enough that a tile's patches stay in a core's L2 cache.
    const TILE_ROWS: usize = 256;

    /// Everything about one convolution's shapes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct Geometry {
        pub n: usize,
        pub c_in: usize,
        pub h: usize,
        pub w: usize,
        pub c_out: usize,
        pub kh: usize,
        pub kw: usize,
        pub stride: [usize; 2],
        /// Top and left padding (bottom and right only change the output size).
        pub pad: [usize; 2],
        pub ho: usize,
        pub wo: usize,
    }

    impl Geometry {
        /// `None` where the shapes do not make a convolution (the caller falls back to burn,
        /// which reports the error its own way).
        pub fn new(
            x: [usize; 4],
            weight: [usize; 4],
            stride: [usize; 2],
            [top, left, bottom, right]: [usize; 4],
        ) -> Option<Self> {
            let [n, c_in, h, w] = x;
            let [c_out, w_in, kh, kw] = weight;
            let size = |side: usize, before: usize, after: usize, k: usize, s: usize| {
                let padded = side + before + after;
                (s > 0 && k > 0 && padded >= k).then(|| (padded - k) / s + 1)
            };
            let ho = size(h, top, bottom, kh, stride[0])?;
            let wo = size(w, left, right, kw, stride[1])?;
            (w_in == c_in && c_out > 0 && c_in > 0 && h > 0 && w > 0).then_some(Geometry {
                n,
                c_in,
                h,
                w,
                c_out,
                kh,
                kw,
                stride,
                pad: [top, left],
                ho,
                wo,
            })
        }

        /// Values per patch, `kh·kw·c_in`.
        pub fn k(&self) -> usize {
            self.kh * self.kw * self.c_in
        }

        fn pixels_in(&self) -> usize {
            self.h * self.w
        }

        fn pixels_out(&self) -> usize {
            self.ho * self.wo
        }

        /// A 1×1 convolution at stride 1 without padding: the patches are the channels-last
        /// input itself.
        fn pointwise(&self) -> bool {
            self.kh == 1
                && self.kw == 1
                && self.stride == [1, 1]
                && self.pad == [0, 0]
                && (self.ho, self.wo) == (self.h, self.w)
        }

        /// A 3×3 convolution at stride 1 that keeps the image size (one pixel of padding on
        /// every side): Winograd's transform applies ([`winograd`]).
        fn winograd(&self) -> bool {
            self.kh == 3
                && self.kw == 3
                && self.stride == [1, 1]
                && self.pad == [1, 1]
                && (self.ho, self.wo) == (self.h, self.w)
        }

        /// The Winograd shapes of the forward pass, or with `adjoint` of the input gradient
        /// (the output gradient convolved back to the input's channels).
        fn winograd_shape(&self, adjoint: bool) -> winograd::Shape {
            let (c_in, c_out) = match adjoint {
                false => (self.c_in, self.c_out),
                true => (self.c_out, self.c_in),
            };
            winograd::Shape {
                h: self.h,
                w: self.w,
                c_in,
                c_out,
            }
        }

        /// `(images per tile, images per group, groups)`: groups of equal numbers of images
        /// (so that the threads finish together), each cut into tiles of about `TILE_ROWS`
        /// output pixels.
        fn plan(&self) -> (usize, usize, usize) {
            // At least eight groups whatever the thread count (two per thread where there are
            // more than four), so that on most machines the weight gradient is summed in the
            // same order.
            let wanted = 8.max(2 * rayon::current_num_threads());
            let per_group = self.n.div_ceil(wanted).max(1);
            let tile = (TILE_ROWS / self.pixels_out().max(1)).clamp(1, per_group);
            (tile, per_group, self.n.div_ceil(per_group).max(1))
        }
    }

    /// `[c_out, c_in, kh, kw]` → `[c_out, kh, kw, c_in]`, the order of a channels-last patch.
    fn kernel_major(weight: &[f32], g: &Geometry) -> Vec<f32> {
        reorder(weight, g, true)
    }

    /// The inverse of [`kernel_major`].
    fn channel_major(weight: &[f32], g: &Geometry) -> Vec<f32> {
        reorder(weight, g, false)
    }

    /// Per output channel, the `c_in × kh·kw` block transposed (`to_kernel_major`) or back.
    fn reorder(weight: &[f32], g: &Geometry, to_kernel_major: bool) -> Vec<f32> {
        let (k, taps) = (g.k(), g.kh * g.kw);
        let mut out = vec![0.0f32; g.c_out * k];
        for (dst, src) in out.chunks_exact_mut(k).zip(weight.chunks_exact(k)) {
            if to_kernel_major {
                transpose(src, g.c_in, taps, dst);
            } else {
                transpose(src, taps, g.c_in, dst);
            }
        }
        out
    }

    /// A convolution's weights in the form its products read: the im2col patches' order, or
    /// Winograd's transformed filter for the 3×3 "same" convolutions ([`Geometry::winograd`]).
    #[derive(Clone, Debug)]
    pub(super) enum Weights {
        /// `[c_out, kh, kw, c_in]` ([`kernel_major`]).
        Patches(Vec<f32>),
        /// `[16, c_in, c_out]` ([`winograd::filter`]).
        Winograd(Vec<f32>),
    }

    impl Weights {
        /// From burn's `[c_out, c_in, kh, kw]`, in the form `g`'s products read.
        pub(super) fn new(weight: &[f32], g: &Geometry) -> Self {
            match g.winograd() {
                true => Weights::Winograd(winograd::filter(weight, g.c_out, g.c_in)),
                false => Weights::patches(weight, g),
            }
        }

        /// The im2col form whatever the shape (the reference the Winograd form is tested
        /// against).
        pub(super) fn patches(weight: &[f32], g: &Geometry) -> Self {
            Weights::Patches(kernel_major(weight, g))
        }
    }

    /// What the input gradient's products read: the patches' weights, or the Winograd filter
    /// of the flipped kernels ([`winograd::adjoint_filter`]).
    enum InputGradient<'a> {
        Patches(&'a [f32]),
        Winograd(Vec<f32>),
    }

    /// The input pixels a row of patches reads for output row `oy` and kernel row `ky`, or
    /// `None` in the padding.
    fn source_row(g: &Geometry, oy: usize, ky: usize) -> Option<usize> {
        (oy * g.stride[0] + ky)
            .checked_sub(g.pad[0])
            .filter(|&iy| iy < g.h)
    }

    /// One image's patches: `cols[(oy·wo + ox)·K + (ky·kw + kx)·c_in + c]` from its
    /// channels-last pixels `x[(iy·w + ix)·c_in + c]`, zero in the padding.
    fn im2col(x: &[f32], g: &Geometry, cols: &mut [f32]) {
        let (k, ci, span) = (g.k(), g.c_in, g.kw * g.c_in);
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let row = &mut cols[(oy * g.wo + ox) * k..][..k];
                for (ky, seg) in row.chunks_exact_mut(span).enumerate() {
                    let Some(iy) = source_row(g, oy, ky) else {
                        seg.fill(0.0);
                        continue;
                    };
                    let left = ox * g.stride[1];
                    if left >= g.pad[1] && left - g.pad[1] + g.kw <= g.w {
                        seg.copy_from_slice(&x[(iy * g.w + left - g.pad[1]) * ci..][..span]);
                        continue;
                    }
                    for (kx, chunk) in seg.chunks_exact_mut(ci).enumerate() {
                        match (left + kx).checked_sub(g.pad[1]).filter(|&ix| ix < g.w) {
                            Some(ix) => chunk.copy_from_slice(&x[(iy * g.w + ix) * ci..][..ci]),
                            None => chunk.fill(0.0),
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`im2col`]: every patch value added back onto the pixel it came from
    /// (`dx` channels-last, zeroed by the caller).
    fn col2im(cols: &[f32], g: &Geometry, dx: &mut [f32]) {
        let (k, ci, span) = (g.k(), g.c_in, g.kw * g.c_in);
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let row = &cols[(oy * g.wo + ox) * k..][..k];
                for (ky, seg) in row.chunks_exact(span).enumerate() {
                    let Some(iy) = source_row(g, oy, ky) else {
                        continue;
                    };
                    let left = ox * g.stride[1];
                    for (kx, chunk) in seg.chunks_exact(ci).enumerate() {
                        if let Some(ix) = (left + kx).checked_sub(g.pad[1]).filter(|&ix| ix < g.w) {
                            let dst = &mut dx[(iy * g.w + ix) * ci..][..ci];
                            for (d, v) in dst.iter_mut().zip(chunk) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Channels-last copies of `images` NCHW images (`[c, pixels]` each → `[pixels, c]`).
    fn channels_last(src: &[f32], images: usize, c: usize, pixels: usize, dst: &mut [f32]) {
        let len = c * pixels;
        for (s, d) in src
            .chunks_exact(len)
            .zip(dst.chunks_exact_mut(len))
            .take(images)
        {
            transpose(s, c, pixels, d);
        }
    }

    /// One tile's patches from its channels-last images `xt` (the images themselves if
    /// pointwise), in `cols` (a scratch buffer) otherwise.
    fn patches<'a>(g: &Geometry, xt: &'a [f32], cols: &'a mut [f32]) -> &'a [f32] {
        if g.pointwise() {
            return xt;
        }
        let (len_in, len_cols) = (g.pixels_in() * g.c_in, g.pixels_out() * g.k());
        let images = xt.len() / len_in;
        for (x, c) in xt.chunks_exact(len_in).zip(cols.chunks_exact_mut(len_cols)) {
            im2col(x, g, c);
        }
        &cols[..images * len_cols]
    }

    /// `bias` added to every pixel of channels-last maps (`[pixels, c]`).
    fn add_to_rows(maps: &mut [f32], bias: &[f32]) {
        for row in maps.chunks_exact_mut(bias.len().max(1)) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    }

    /// `sums[c] += Σ_pixels maps[pixel, c]` over channels-last maps.
    fn add_row_sums(maps: &[f32], sums: &mut [f32]) {
        for row in maps.chunks_exact(sums.len().max(1)) {
            sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
    }

    /// `len` values per group for `groups` groups of `buffer` (empty groups where `buffer` is
    /// empty), for a parallel zip with other per-group chunks.
    fn group_chunks(buffer: &mut [f32], len: usize, groups: usize) -> Vec<&mut [f32]> {
        let mut chunks: Vec<&mut [f32]> = buffer.chunks_mut(len.max(1)).collect();
        chunks.resize_with(groups, Default::default);
        chunks
    }

    /// The products of one tile of `images` channels-last images `xt` into their channels-last
    /// result (no bias). `cols`: room for the tile's patches where they are needed.
    fn convolve_tile(
        g: &Geometry,
        weights: &Weights,
        xt: &[f32],
        result: &mut [f32],
        cols: &mut [f32],
        threads: bool,
    ) {
        match weights {
            Weights::Winograd(filter) => {
                winograd::convolve(xt, g.winograd_shape(false), filter, result, threads);
            }
            Weights::Patches(weight) => {
                let rows = result.len() / g.c_out;
                let cols = patches(g, xt, cols);
                let k = g.k();
                product(
                    result,
                    (false, threads),
                    (rows, g.c_out, k),
                    cols,
                    (k, 1),
                    weight,
                    (1, k),
                );
            }
        }
    }

    /// The convolution of `x` with `weights` plus `bias`, `x` and the output in `layout`
    /// (`[n, c_in, h, w]` → `[n, c_out, ho, wo]` channels-first, `[n, h, w, c_in]` →
    /// `[n, ho, wo, c_out]` channels-last): `(out, xt)`, `xt` the channels-first input's
    /// channels-last copy, which the backward step reads (empty for a channels-last input: the
    /// backward step reads that itself).
    pub(super) fn forward(
        x: &[f32],
        weights: &Weights,
        bias: &[f32],
        g: &Geometry,
        layout: Layout,
    ) -> (Vec<f32>, Vec<f32>) {
        let (tile, per_group, groups) = g.plan();
        let (len_in, len_out) = (g.c_in * g.pixels_in(), g.c_out * g.pixels_out());
        let copies = layout == Layout::ChannelsFirst;
        let mut xt = vec![0.0f32; if copies { g.n * len_in } else { 0 }];
        if g.n == 0 {
            return (Vec::new(), xt);
        }
        let (k, p, threads) = (g.k(), g.pixels_out(), groups == 1);
        let run = |x: &[f32], xt: &mut [f32], out: &mut [f32]| {
            let im2col = !g.pointwise() && matches!(weights, Weights::Patches(_));
            let mut cols = scratch::take(if im2col { tile * p * k } else { 0 });
            let mut result = scratch::take(if copies { tile * p * g.c_out } else { 0 });
            let mut xt_tiles = xt.chunks_mut(tile * len_in);
            for (x, out) in x.chunks(tile * len_in).zip(out.chunks_mut(tile * len_out)) {
                match layout {
                    Layout::ChannelsLast => {
                        convolve_tile(g, weights, x, out, &mut cols, threads);
                        add_to_rows(out, bias);
                    }
                    Layout::ChannelsFirst => {
                        let images = x.len() / len_in;
                        let xt = xt_tiles.next().unwrap_or_default();
                        channels_last(x, images, g.c_in, g.pixels_in(), xt);
                        let result = &mut result[..images * p * g.c_out];
                        convolve_tile(g, weights, xt, result, &mut cols, threads);
                        for (r, o) in result
                            .chunks_exact(p * g.c_out)
                            .zip(out.chunks_exact_mut(len_out))
                        {
                            transpose(r, p, g.c_out, o);
                            for (plane, b) in o.chunks_exact_mut(p).zip(bias) {
                                plane.iter_mut().for_each(|v| *v += b);
                            }
                        }
                    }
                }
            }
            scratch::give(cols);
            scratch::give(result);
        };
        let inputs =
            x.par_chunks(per_group * len_in)
                .zip(group_chunks(&mut xt, per_group * len_in, groups));
        let len = g.n * len_out;
        let (out, _) = par_vec_map(len, per_group * len_out, inputs, |out, (x, xt)| {
            run(x, xt, out)
        });
        (out, xt)
    }

    /// The input gradient of one tile, channels-last, into `dxt` from the tile's channels-last
    /// output gradient `dout_t`. `dcols`: room for the patches' gradients where they are needed.
    fn input_gradient_tile(
        g: &Geometry,
        gradient: &InputGradient<'_>,
        dout_t: &[f32],
        dxt: &mut [f32],
        dcols: &mut [f32],
        threads: bool,
    ) {
        let (k, co) = (g.k(), g.c_out);
        let rows = dout_t.len() / co;
        match gradient {
            InputGradient::Winograd(adjoint) => {
                winograd::convolve(dout_t, g.winograd_shape(true), adjoint, dxt, threads);
            }
            InputGradient::Patches(weight) => {
                // A pointwise convolution's patch gradients are the input gradient.
                let target = match g.pointwise() {
                    true => &mut *dxt,
                    false => &mut dcols[..rows * k],
                };
                product(
                    target,
                    (false, threads),
                    (rows, k, co),
                    dout_t,
                    (co, 1),
                    weight,
                    (k, 1),
                );
                if !g.pointwise() {
                    dxt.fill(0.0);
                    let len_in = g.c_in * g.pixels_in();
                    let dcols = &dcols[..rows * k];
                    let images = dcols
                        .chunks_exact(g.pixels_out() * k)
                        .zip(dxt.chunks_exact_mut(len_in));
                    for (c, d) in images {
                        col2im(c, g, d);
                    }
                }
            }
        }
    }

    /// The gradients of [`forward`] for the incoming gradient `dout` (in `layout`), given the
    /// input channels-last (`xt`: [`forward`]'s copy, or the channels-last input itself):
    /// `(dx, dweight, dbias)`, `dx` in `layout` and `dweight` in burn's `[c_out, c_in, kh, kw]`,
    /// each empty where not wanted.
    pub(super) fn backward(
        xt: &[f32],
        weights: &Weights,
        dout: &[f32],
        g: &Geometry,
        (want_dx, want_dw): (bool, bool),
        layout: Layout,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (tile, per_group, groups) = g.plan();
        let (len_in, len_out) = (g.c_in * g.pixels_in(), g.c_out * g.pixels_out());
        let (k, p, co) = (g.k(), g.pixels_out(), g.c_out);
        let copies = layout == Layout::ChannelsFirst;
        let threads = groups == 1;
        // The input gradient of a 3×3 "same" convolution is one too, of the output gradient.
        let input_gradient = want_dx.then(|| match weights {
            Weights::Patches(weight) => InputGradient::Patches(weight),
            Weights::Winograd(filter) => {
                InputGradient::Winograd(winograd::adjoint_filter(filter, co, g.c_in))
            }
        });
        let winograd = matches!(weights, Weights::Winograd(_));
        // A Winograd weight gradient is summed in the transformed filter's `[16, c_in, c_out]`.
        let dw_len = match (want_dw, winograd) {
            (false, _) => 0,
            (true, false) => co * k,
            (true, true) => 16 * g.c_in * co,
        };
        // One group: its share of dW and db, and its images' dx.
        let run = |xt: &[f32], dout: &[f32], dx: &mut [f32]| -> (Vec<f32>, Vec<f32>) {
            let unless_pointwise = |len: usize| if g.pointwise() { 0 } else { len };
            let im2col_dx = matches!(input_gradient, Some(InputGradient::Patches(_)));
            let mut cols = scratch::take(if want_dw && !winograd {
                unless_pointwise(tile * p * k)
            } else {
                0
            });
            let mut dcols = scratch::take(if im2col_dx {
                unless_pointwise(tile * p * k)
            } else {
                0
            });
            let mut dxt = scratch::take(if want_dx && copies { tile * len_in } else { 0 });
            let mut dout_t = scratch::take(if copies { tile * len_out } else { 0 });
            let mut dw = vec![0.0f32; dw_len];
            let mut db = vec![0.0f32; co];
            let mut dx_tiles = dx.chunks_mut(tile * len_in);
            for (xt, dout) in xt.chunks(tile * len_in).zip(dout.chunks(tile * len_out)) {
                let images = dout.len() / len_out;
                let rows = images * p;
                // The tile's output gradient channels-last, and its share of the bias gradient.
                let dout_t: &[f32] = match layout {
                    Layout::ChannelsLast => {
                        add_row_sums(dout, &mut db);
                        dout
                    }
                    Layout::ChannelsFirst => {
                        for image in dout.chunks_exact(len_out) {
                            for (s, plane) in db.iter_mut().zip(image.chunks_exact(p)) {
                                *s += sum(plane);
                            }
                        }
                        channels_last(dout, images, co, p, &mut dout_t);
                        &dout_t[..rows * co]
                    }
                };
                match (want_dw, weights) {
                    (false, _) => {}
                    (true, Weights::Winograd(_)) => {
                        let shape = g.winograd_shape(false);
                        winograd::accumulate_filter_gradient(xt, dout_t, shape, &mut dw, threads);
                    }
                    (true, Weights::Patches(_)) => {
                        let cols = patches(g, xt, &mut cols);
                        let shape = (co, k, rows);
                        product(
                            &mut dw,
                            (true, threads),
                            shape,
                            dout_t,
                            (1, co),
                            cols,
                            (k, 1),
                        );
                    }
                }
                if let (Some(dx), Some(gradient)) = (dx_tiles.next(), &input_gradient) {
                    match layout {
                        Layout::ChannelsLast => {
                            input_gradient_tile(g, gradient, dout_t, dx, &mut dcols, threads);
                        }
                        Layout::ChannelsFirst => {
                            let dxt = &mut dxt[..images * len_in];
                            input_gradient_tile(g, gradient, dout_t, dxt, &mut dcols, threads);
                            for (s, d) in dxt.chunks_exact(len_in).zip(dx.chunks_exact_mut(len_in))
                            {
                                transpose(s, g.pixels_in(), g.c_in, d);
                            }
                        }
                    }
                }
            }
            for buffer in [cols, dcols, dxt, dout_t] {
                scratch::give(buffer);
            }
            (dw, db)
        };
        let inputs = xt
            .par_chunks(per_group * len_in)
            .zip(dout.par_chunks(per_group * len_out));
        let len = if want_dx { g.n * len_in } else { 0 };
        let (dx, partials) = par_vec_map(len, per_group * len_in, inputs, |dx, (xt, dout)| {
            run(xt, dout, dx)
        });
        // The groups' shares summed in their order, element runs on rayon's threads.
        let mut dw = vec![0.0f32; dw_len];
        let mut db = vec![0.0f32; co];
        const RUN: usize = 1 << 14;
        dw.par_chunks_mut(RUN).enumerate().for_each(|(k, run)| {
            for (pw, _) in &partials {
                run.iter_mut()
                    .zip(&pw[k * RUN..])
                    .for_each(|(s, v)| *s += v);
            }
        });
        for (_, pb) in &partials {
            db.iter_mut().zip(pb).for_each(|(s, v)| *s += v);
        }
        let dw = match (want_dw, winograd) {
            (false, _) => dw,
            (true, false) => channel_major(&dw, g),
            (true, true) => winograd::filter_gradient(&dw, co, g.c_in),
        };
        (dx, dw, db)
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{on_flex, record, values, FlexAutodiff};
    use super::kernels::{self, Geometry, Weights};
    use super::Layout;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::Flex;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;
    use std::borrow::Cow;

    /// `(top, left, bottom, right)`, or `None` for `Same` (which depends on the input size and
    /// takes burn's path).
    pub(super) fn explicit_padding(padding: &PaddingConfig2d) -> Option<[usize; 4]> {
        match *padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, left, bottom, right]),
            PaddingConfig2d::Valid => Some([0; 4]),
            PaddingConfig2d::Same => None,
        }
    }

    /// The fast op where it applies (f32, shapes that make a convolution); `x` back otherwise.
    /// `x` and the output are in `layout`.
    pub(super) fn convolve<B: Backend>(
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
        bias: Tensor<B, 1>,
        stride: [usize; 2],
        padding: [usize; 4],
        layout: Layout,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let f32s = [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3];
        let Some(g) = Geometry::new(layout.nchw(x.dims()), weight.dims(), stride, padding) else {
            return Err(x);
        };
        if !f32s || bias.dims() != [g.c_out] {
            return Err(x);
        }
        let autodiff = |x, w, b| autodiff(x, w, b, g, layout);
        on_flex((x, weight, bias), autodiff, |x, w, b| {
            let weights = kernels::Weights::new(&values(&w), &g);
            let (y, _) = kernels::forward(&values(&x), &weights, &values(&b), &g, layout);
            output(y, &g, layout)
        })
    }

    fn output(values: Vec<f32>, g: &Geometry, layout: Layout) -> FlexTensor {
        let dims = layout.dims([g.n, g.c_out, g.ho, g.wo]);
        FlexTensor::from_data(TensorData::new(values, dims))
    }

    /// The input as the backward step reads it: channels-last.
    #[derive(Clone, Debug)]
    enum Input {
        /// A channels-first input's channels-last copy.
        Copy(Vec<f32>),
        /// A channels-last input itself (shared, not copied).
        Shared(FlexTensor),
    }

    /// What the backward step keeps: the input, the weights in the form the products read, the
    /// shapes and the layout.
    #[derive(Clone, Debug)]
    struct Saved {
        input: Input,
        weights: Weights,
        geometry: Geometry,
        layout: Layout,
    }

    #[derive(Debug)]
    struct Conv2dBackward;

    impl Backward<Flex, 3> for Conv2dBackward {
        type State = Saved;

        fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let Saved {
                input,
                weights,
                geometry: g,
                layout,
            } = ops.state;
            let [x_node, w_node, b_node] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let wants = (x_node.is_some(), w_node.is_some());
            let xt = match &input {
                Input::Copy(xt) => Cow::Borrowed(xt.as_slice()),
                Input::Shared(x) => values(x),
            };
            let (dx, dw, db) = kernels::backward(&xt, &weights, &values(&grad), &g, wants, layout);
            if let Some(node) = b_node {
                let db = FlexTensor::from_data(TensorData::new(db, [g.c_out]));
                grads.register::<Flex>(node.id, db);
            }
            if let Some(node) = w_node {
                let dw = FlexTensor::from_data(TensorData::new(dw, [g.c_out, g.c_in, g.kh, g.kw]));
                grads.register::<Flex>(node.id, dw);
            }
            if let Some(node) = x_node {
                let dims = layout.dims([g.n, g.c_in, g.h, g.w]);
                let dx = FlexTensor::from_data(TensorData::new(dx, dims));
                grads.register::<Flex>(node.id, dx);
            }
        }
    }

    fn autodiff(
        x: Tensor<FlexAutodiff, 4>,
        weight: Tensor<FlexAutodiff, 4>,
        bias: Tensor<FlexAutodiff, 1>,
        g: Geometry,
        layout: Layout,
    ) -> Tensor<FlexAutodiff, 4> {
        let (x, w, b) = (
            x.into_primitive().tensor(),
            weight.into_primitive().tensor(),
            bias.into_primitive().tensor(),
        );
        let weights = kernels::Weights::new(&values(&w.primitive), &g);
        let (y, xt) = kernels::forward(
            &values(&x.primitive),
            &weights,
            &values(&b.primitive),
            &g,
            layout,
        );
        let y = output(y, &g, layout);
        let state = || Saved {
            input: match layout {
                Layout::ChannelsFirst => Input::Copy(xt),
                Layout::ChannelsLast => Input::Shared(x.primitive.clone()),
            },
            weights,
            geometry: g,
            layout,
        };
        record(Conv2dBackward, [&x, &w, &b], state, y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Distribution, TensorData, Tolerance};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    type Ad = Autodiff<Flex>;

    /// One convolution case: `[n, c_in, h, w]`, `c_out`, kernel, stride, padding.
    type Case = ([usize; 4], usize, usize, usize, usize);

    /// Random cases over the shapes the issue names (odd sizes, stride 1 and 2, padding 0/1,
    /// kernel 1 and 3), plus the UNet's own at a batch that spans several tiles and groups.
    fn cases() -> Vec<Case> {
        let mut rng = StdRng::seed_from_u64(16);
        let mut cases: Vec<Case> = (0..40)
            .map(|_| {
                let kernel: usize = [1, 3][rng.random_range(0..2)];
                let pad: usize = rng.random_range(0..2);
                let min = kernel.saturating_sub(2 * pad).max(1);
                (
                    [
                        rng.random_range(1..6),
                        rng.random_range(1..10),
                        rng.random_range(min..12),
                        rng.random_range(min..12),
                    ],
                    rng.random_range(1..10),
                    kernel,
                    rng.random_range(1..3),
                    pad,
                )
            })
            .collect();
        cases.extend([
            ([40, 8, 14, 14], 32, 3, 1, 1),
            ([40, 32, 14, 14], 32, 3, 2, 1),
            ([70, 64, 4, 4], 64, 3, 1, 1),
            ([33, 96, 7, 7], 64, 1, 1, 0),
            // Winograd on odd sides with channels in whole vector blocks and a remainder.
            ([9, 20, 7, 7], 18, 3, 1, 1),
            ([5, 33, 5, 9], 16, 3, 1, 1),
        ]);
        cases
    }

    fn layer<B: burn::tensor::backend::Backend>(case: &Case, device: &B::Device) -> Conv2d<B> {
        let ([_, c_in, _, _], c_out, kernel, stride, pad) = *case;
        Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init::<B>(device)
    }

    /// The fast op's output and its three gradients, and burn's, for one case: a random
    /// probe as the incoming gradient.
    /// Channels-last inputs go in transposed and their outputs come back transposed.
    fn both(case: &Case, seed: u64, layout: Layout) -> [(TensorData, TensorData); 4] {
        let device = Default::default();
        <Ad as burn::tensor::backend::Backend>::seed(&device, seed);
        let conv = layer::<Ad>(case, &device);
        let x =
            Tensor::<Ad, 4>::random(case.0, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let first = Layout::ChannelsFirst;
        let fast = conv2d_in(&conv, relayout(x.clone(), first, layout), layout);
        let fast = relayout(fast, layout, first);
        let plain = conv.forward(x.clone());
        let probe = Tensor::<Ad, 4>::random(plain.dims(), Distribution::Default, &device);
        let g_fast = (fast.clone() * probe.clone()).sum().backward();
        let g_plain = (plain.clone() * probe).sum().backward();
        let bias = conv.bias.as_ref().expect("bias").val();
        let weight = conv.weight.val();
        let grad = |g| {
            (
                x.grad(g).expect("dx").into_data(),
                weight.grad(g).expect("dw").into_data(),
                bias.grad(g).expect("db").into_data(),
            )
        };
        let (fx, fw, fb) = grad(&g_fast);
        let (px, pw, pb) = grad(&g_plain);
        [
            (fast.into_data(), plain.into_data()),
            (fx, px),
            (fw, pw),
            (fb, pb),
        ]
    }

    #[test]
    fn matches_burns_convolution_and_its_gradients_on_random_shapes() {
        // Sums of up to a few thousand order-1 terms in another order.
        let tolerance = Tolerance::rel_abs(1e-4, 1e-4);
        let layouts = [Layout::ChannelsFirst, Layout::ChannelsLast];
        for (i, case) in cases().iter().enumerate() {
            for (what, (fast, plain)) in layouts.iter().flat_map(|&layout| {
                ["output", "dx", "dweight", "dbias"]
                    .map(|what| format!("{what} ({layout:?})"))
                    .into_iter()
                    .zip(both(case, i as u64, layout))
            }) {
                assert_eq!(fast.shape, plain.shape, "{what} of {case:?}");
                let (f, p) = (
                    fast.to_vec::<f32>().expect("f32"),
                    plain.to_vec::<f32>().expect("f32"),
                );
                let scale = p.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (a, b) in f.iter().zip(&p) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(scale * 1e-2) + 1e-6,
                        "{what} of {case:?}: {a} against {b}"
                    );
                }
                fast.assert_approx_eq::<f32>(&plain, tolerance);
            }
        }
    }

    /// The inference backend (no autodiff) takes the same fast forward pass.
    #[test]
    fn inference_backend_takes_the_fast_forward_pass() {
        let device = Default::default();
        // Stride 2 (im2col) and a 3×3 "same" convolution (Winograd).
        for case in [([3, 5, 9, 7], 6, 3, 2, 1), ([3, 18, 9, 7], 20, 3, 1, 1)] {
            let conv = layer::<Flex>(&case, &device);
            let x = Tensor::<Flex, 4>::random(case.0, Distribution::Normal(0.0, 1.0), &device);
            conv2d(&conv, x.clone())
                .into_data()
                .assert_approx_eq::<f32>(
                    &conv.forward(x).into_data(),
                    Tolerance::rel_abs(1e-4, 1e-5),
                );
        }
    }

    /// Against another backend's convolution altogether (ndarray), the same weights.
    #[cfg(feature = "ndarray")]
    #[test]
    fn matches_the_ndarray_backend() {
        use burn::backend::NdArray;
        use burn::module::Param;
        type Nd = Autodiff<NdArray>;
        let device = Default::default();
        for case in [([4, 7, 11, 9], 5, 3, 2, 1), ([9, 6, 8, 8], 10, 3, 1, 1)] {
            let conv = layer::<Ad>(&case, &device);
            let mut nd = layer::<Nd>(&case, &Default::default());
            let copy =
                |t: Tensor<Ad, 4>| Tensor::<Nd, 4>::from_data(t.to_data(), &Default::default());
            nd.weight = Param::from_tensor(copy(conv.weight.val()));
            let bias = conv.bias.as_ref().expect("bias").val().to_data();
            nd.bias = Some(Param::from_tensor(Tensor::from_data(
                bias,
                &Default::default(),
            )));
            let x = Tensor::<Ad, 4>::random(case.0, Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let xn = Tensor::<Nd, 4>::from_data(x.to_data(), &Default::default()).require_grad();
            let fast = conv2d(&conv, x.clone());
            let reference = nd.forward(xn.clone());
            let tolerance = Tolerance::rel_abs(1e-4, 1e-4);
            fast.to_data()
                .assert_approx_eq::<f32>(&reference.to_data(), tolerance);
            let gf = fast.sum().backward();
            let gn = reference.sum().backward();
            x.grad(&gf)
                .expect("dx")
                .into_data()
                .assert_approx_eq::<f32>(&xn.grad(&gn).expect("dx").into_data(), tolerance);
            conv.weight
                .val()
                .grad(&gf)
                .expect("dw")
                .into_data()
                .assert_approx_eq::<f32>(
                    &nd.weight.val().grad(&gn).expect("dw").into_data(),
                    tolerance,
                );
        }
    }
}

/// The two forms of the 3×3 "same" convolution's products against each other, on the plain
/// kernels: im2col patches and Winograd's transform.
#[cfg(all(test, feature = "flex"))]
mod winograd_against_patches {
    use super::kernels::{self, Geometry, Weights};
    use super::Layout;

    const CF: Layout = Layout::ChannelsFirst;

    /// `(x, weight, dout)` for a geometry, deterministic and of order one.
    fn inputs(g: &Geometry) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let wave = |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect();
        (
            wave(g.n * g.c_in * g.h * g.w, 0.37),
            wave(g.c_out * g.c_in * 9, 0.91),
            wave(g.n * g.c_out * g.h * g.w, 0.53),
        )
    }

    /// The UNet's shapes (the levels' channels at 14, 7 and 4 pixels, the skip concatenations).
    const SHAPES: [(usize, usize, usize, usize); 8] = [
        (64, 32, 14, 32),
        (64, 64, 14, 32),
        (64, 96, 14, 32),
        (64, 32, 7, 64),
        (64, 64, 7, 64),
        (64, 128, 7, 64),
        (64, 64, 4, 64),
        (64, 128, 4, 64),
    ];

    fn geometry((n, c, h, co): (usize, usize, usize, usize)) -> Geometry {
        Geometry::new([n, c, h, h], [co, c, 3, 3], [1, 1], [1; 4]).expect("a convolution")
    }

    #[test]
    fn both_forms_give_the_same_output_and_gradients() {
        for shape in [(3, 5, 7, 6), (2, 17, 4, 33), (9, 16, 14, 16)] {
            let g = geometry(shape);
            let (x, w, dout) = inputs(&g);
            let bias = vec![0.25f32; g.c_out];
            let winograd = Weights::new(&w, &g);
            assert!(matches!(winograd, Weights::Winograd(_)));
            let patches = Weights::patches(&w, &g);
            let (y_w, xt) = kernels::forward(&x, &winograd, &bias, &g, CF);
            let (y_p, _) = kernels::forward(&x, &patches, &bias, &g, CF);
            let (dx_w, dw_w, db_w) = kernels::backward(&xt, &winograd, &dout, &g, (true, true), CF);
            let (dx_p, dw_p, db_p) = kernels::backward(&xt, &patches, &dout, &g, (true, true), CF);
            for (what, a, b) in [
                ("output", y_w, y_p),
                ("dx", dx_w, dx_p),
                ("dweight", dw_w, dw_p),
                ("dbias", db_w, db_p),
            ] {
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                assert_eq!(a.len(), b.len(), "{what} of {shape:?}");
                for (a, b) in a.iter().zip(&b) {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale,
                        "{what} of {shape:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Not a check: the time of each form on the UNet's shapes at batch 64 (best of 20
    /// alternating calls), for docs/benchmarks.md. `cargo test --release --lib
    /// winograd_against_patches -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_both_forms_on_the_unets_shapes() {
        for shape in SHAPES {
            let g = geometry(shape);
            let (x, w, dout) = inputs(&g);
            let bias = vec![0.0f32; g.c_out];
            let forms = [Weights::patches(&w, &g), Weights::new(&w, &g)];
            let mut best = [[f64::MAX; 3]; 2];
            for round in 0..40 {
                let (form, best) = (&forms[round % 2], &mut best[round % 2]);
                let clock = std::time::Instant::now();
                let (_, xt) = kernels::forward(&x, form, &bias, &g, CF);
                best[0] = best[0].min(clock.elapsed().as_secs_f64());
                let clock = std::time::Instant::now();
                kernels::backward(&xt, form, &dout, &g, (true, false), CF);
                best[1] = best[1].min(clock.elapsed().as_secs_f64());
                let clock = std::time::Instant::now();
                kernels::backward(&xt, form, &dout, &g, (false, true), CF);
                best[2] = best[2].min(clock.elapsed().as_secs_f64());
            }
            let ms = |b: [f64; 3]| format!("{:.2} {:.2} {:.2}", b[0] * 1e3, b[1] * 1e3, b[2] * 1e3);
            println!(
                "{shape:?} ms forward/dx/dweight: patches {} winograd {}",
                ms(best[0]),
                ms(best[1])
            );
        }
    }
}
