//! Multi-head self-attention over the pixels of feature maps, one op on the default CPU backend.
//!
//! Composed from burn's operations, the attention block of the UNet was about a quarter of its
//! training step at 7×7 pixels (three blocks there cost 40 of 150 ms: measured by training the
//! default UNet with and without them): the query, key and value maps are slices of one
//! projection, and every slice's gradient is a zero-filled copy of the whole projection; the
//! per-head views are strided, so reshaping them copies element by element, and the batched
//! products allocate and copy again. Here, for channels-last maps, the two projections are one
//! product each over all pixels of the batch, and each image's heads run their scores, softmax
//! and weighted sums on slices of those products in place (rayon's threads over the images); the
//! backward step keeps the projections and the attention weights and runs the same way back.
//! Other backends, channels-first maps and attention with extra keys (the anchor's tokens) take
//! burn's composition.

use super::conv2d::pixelwise;
use super::layout::{relayout, Layout};
use super::scaled_softmax;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `proj(attention(qkv(x)))` for feature maps `x` (`[n, c, h, w]`, or `[n, h, w, c]`
/// channels-last: `layout`), in `x`'s layout and without the residual: each pixel's query, key
/// and value are its `qkv` projection's three thirds, split into `heads` heads of `c / heads`
/// channels, and every pixel attends to every pixel of its image, plus to `context` where given
/// (`[n, tokens, 2c]`: more keys, then more values, such as an anchor's tokens).
///
/// # Panics
/// Like burn's tensor operations, where the shapes do not fit: `qkv` not `c → 3c`, `proj` not
/// `c → c`, `heads` not dividing `c`. (The UNet checks its configuration before it builds
/// anything.)
pub(crate) fn self_attention<B: Backend>(
    x: Tensor<B, 4>,
    (qkv, proj): (&Linear<B>, &Linear<B>),
    heads: usize,
    context: Option<Tensor<B, 3>>,
    layout: Layout,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match (&context, layout) {
        (None, Layout::ChannelsLast) if super::fused_kernels() => {
            match flex::attend(x, (qkv, proj), heads) {
                Ok(y) => return y,
                Err(x) => x,
            }
        }
        _ => x,
    };
    composed(x, (qkv, proj), heads, context, layout)
}

/// burn's composition, channels-first inside: with `[n, c, pixels]` in memory, the projections
/// (1×1 convolutions) and the two attention products read the maps or transposed views of them
/// in place. Channels-last maps are transposed on the way in and out.
fn composed<B: Backend>(
    x: Tensor<B, 4>,
    (qkv, proj): (&Linear<B>, &Linear<B>),
    heads: usize,
    context: Option<Tensor<B, 3>>,
    layout: Layout,
) -> Tensor<B, 4> {
    let x = relayout(x, layout, Layout::ChannelsFirst);
    let [n, c, h, w] = x.dims();
    let qkv = pixelwise(qkv, x).reshape([n, 3 * c, h * w]);
    let d = c / heads;
    let split = |t: Tensor<B, 3>| {
        let len = t.dims()[2];
        t.reshape([n, heads, d, len])
    };
    let q = split(qkv.clone().narrow(1, 0, c));
    let mut k = split(qkv.clone().narrow(1, c, c));
    let mut v = split(qkv.narrow(1, 2 * c, c));
    if let Some(kv) = context {
        // The extra keys and values, `[n, tokens, 2c]`, as more columns.
        let kv = kv.swap_dims(1, 2);
        k = Tensor::cat(vec![k, split(kv.clone().narrow(1, 0, c))], 3);
        v = Tensor::cat(vec![v, split(kv.narrow(1, c, c))], 3);
    }
    // scores[i, j] = q_i·k_j / √d over pixels i and keys j; out_i = Σ_j weights[i, j]·v_j.
    let scale = 1.0 / (d as f64).sqrt();
    let weights = scaled_softmax(q.swap_dims(2, 3).matmul(k), scale);
    let out = v.matmul(weights.swap_dims(2, 3)).reshape([n, c, h, w]);
    relayout(pixelwise(proj, out), Layout::ChannelsFirst, layout)
}

/// The kernels on plain slices: channels-last pixels `[n·p, c]`, the projection `[n·p, 3c]`
/// (each pixel's query, key and value; head `h`'s channels `h·d .. (h + 1)·d` of each), the
/// attention weights `[n, heads, p, p]`.
#[cfg(feature = "flex")]
mod kernels {
    use super::super::flex_ops::{par_vecs_map, product};
    use super::super::scratch;
    use super::super::softmax::kernels::{backward_row, forward_row};
    use rayon::prelude::*;

    /// The shapes of one call.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Shape {
        /// Images.
        pub n: usize,
        /// Pixels per image.
        pub p: usize,
        /// Channels.
        pub c: usize,
        pub heads: usize,
    }

    impl Shape {
        /// Channels per head.
        fn d(&self) -> usize {
            self.c / self.heads
        }

        fn rows(&self) -> usize {
            self.n * self.p
        }

        fn scale(&self) -> f32 {
            1.0 / (self.d() as f32).sqrt()
        }
    }

    /// What the backward step reads besides the input and the weights.
    #[derive(Clone, Debug)]
    pub(super) struct Kept {
        /// `[n·p, 3c]`.
        pub qkv: Vec<f32>,
        /// `[n, heads, p, p]`.
        pub weights: Vec<f32>,
        /// The heads' outputs before the output projection, `[n·p, c]`.
        pub heads_out: Vec<f32>,
    }

    /// `x·w + bias` for `rows` rows of `x` (`[rows, k]`) and `w` (`[k, bias.len()]`), on
    /// rayon's threads: the bias rows written in parallel pieces, then the product added.
    fn affine(x: &[f32], w: &[f32], bias: &[f32], rows: usize) -> Vec<f32> {
        let (k, m) = (w.len() / bias.len().max(1), bias.len());
        let (len, piece) = (rows * m, m.max(1) * 64);
        let pieces = (0..len.div_ceil(piece)).into_par_iter();
        let ([mut out], _) = par_vecs_map([(len, piece, bias)], pieces, |_, _| ());
        product(&mut out, (true, true), (rows, m, k), x, (k, 1), w, (m, 1));
        out
    }

    /// Head `h`'s query, key and value columns of a `[p, 3c]` projection (each row `3c` long,
    /// the head's `d` channels from the returned slices' starts).
    fn head(qkv: &[f32], c: usize, d: usize, h: usize) -> [&[f32]; 3] {
        [0, c, 2 * c].map(|third| &qkv[third + h * d..])
    }

    /// `Σ_rows values` of a `[rows, width]` matrix.
    fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
        let mut sums = vec![0.0f32; width];
        for row in values.chunks_exact(width.max(1)) {
            sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        sums
    }

    /// `dst[:, at..at + src_cols]` (row stride `stride`) := `src` (`[rows, src_cols]`).
    fn put_columns(src: &[f32], src_cols: usize, dst: &mut [f32], stride: usize, at: usize) {
        for (s, d) in src.chunks_exact(src_cols).zip(dst.chunks_mut(stride)) {
            d[at..at + src_cols].copy_from_slice(s);
        }
    }

    /// The attention of the pixels `x` (`[n·p, c]`) with projections `(wq, bq)` (`[c, 3c]`,
    /// `[3c]`) and `(wp, bp)` (`[c, c]`, `[c]`): `(y, kept)`, `y` `[n·p, c]`.
    pub(super) fn forward(
        x: &[f32],
        (wq, bq): (&[f32], &[f32]),
        (wp, bp): (&[f32], &[f32]),
        s: Shape,
    ) -> (Vec<f32>, Kept) {
        let (p, c, d) = (s.p, s.c, s.d());
        let qkv = affine(x, wq, bq, s.rows());
        let mut weights = vec![0.0f32; s.n * s.heads * p * p];
        let mut heads_out = vec![0.0f32; s.rows() * c];
        weights
            .par_chunks_mut(s.heads * p * p)
            .zip(heads_out.par_chunks_mut(p * c))
            .zip(qkv.par_chunks(p * 3 * c))
            .for_each(|((weights, out), qkv)| {
                let mut scores_buffer = scratch::take(p * p);
                let mut head_buffer = scratch::take(p * d);
                let (scores_h, head_h) = (&mut scores_buffer[..p * p], &mut head_buffer[..p * d]);
                for (h, weights) in weights.chunks_exact_mut(p * p).enumerate() {
                    let [q, k, v] = head(qkv, c, d, h);
                    // scores[i, j] = q_i·k_j; the weights their softmax (scaled) per row.
                    product(
                        scores_h,
                        (false, false),
                        (p, p, d),
                        q,
                        (3 * c, 1),
                        k,
                        (1, 3 * c),
                    );
                    for (w, row) in weights.chunks_exact_mut(p).zip(scores_h.chunks_exact(p)) {
                        forward_row(row, s.scale(), w);
                    }
                    // out_i = Σ_j weights[i, j]·v_j.
                    product(
                        head_h,
                        (false, false),
                        (p, d, p),
                        weights,
                        (p, 1),
                        v,
                        (3 * c, 1),
                    );
                    put_columns(head_h, d, out, c, h * d);
                }
                scratch::give(scores_buffer);
                scratch::give(head_buffer);
            });
        let y = affine(&heads_out, wp, bp, s.rows());
        let kept = Kept {
            qkv,
            weights,
            heads_out,
        };
        (y, kept)
    }

    /// The gradients of [`forward`] for the incoming `dy`: `(dx, (dwq, dbq), (dwp, dbp))`.
    #[allow(clippy::type_complexity)]
    pub(super) fn backward(
        x: &[f32],
        (wq, wp): (&[f32], &[f32]),
        kept: &Kept,
        dy: &[f32],
        s: Shape,
    ) -> (Vec<f32>, (Vec<f32>, Vec<f32>), (Vec<f32>, Vec<f32>)) {
        let (p, c, d, rows) = (s.p, s.c, s.d(), s.rows());
        // The output projection: dWp = Oᵀ·dy, dbp = Σ dy, dO = dy·Wpᵀ.
        let mut dwp = vec![0.0f32; c * c];
        product(
            &mut dwp,
            (false, true),
            (c, c, rows),
            &kept.heads_out,
            (1, c),
            dy,
            (c, 1),
        );
        let dbp = column_sums(dy, c);
        let mut d_out = vec![0.0f32; rows * c];
        product(
            &mut d_out,
            (false, true),
            (rows, c, c),
            dy,
            (c, 1),
            wp,
            (1, c),
        );
        // Per image and head, back through the weighted sums, the softmax and the scores.
        let mut dqkv = vec![0.0f32; rows * 3 * c];
        dqkv.par_chunks_mut(p * 3 * c)
            .zip(kept.qkv.par_chunks(p * 3 * c))
            .zip(kept.weights.par_chunks(s.heads * p * p))
            .zip(d_out.par_chunks(p * c))
            .for_each(|(((dqkv, qkv), weights), d_out)| {
                let mut dw_buffer = scratch::take(p * p);
                let mut head_buffer = scratch::take(p * d);
                let (dw, head_h) = (&mut dw_buffer[..p * p], &mut head_buffer[..p * d]);
                for (h, weights) in weights.chunks_exact(p * p).enumerate() {
                    let [q, k, v] = head(qkv, c, d, h);
                    let d_head = &d_out[h * d..];
                    // dv_j = Σ_i weights[i, j]·dO_i.
                    product(
                        head_h,
                        (false, false),
                        (p, d, p),
                        weights,
                        (1, p),
                        d_head,
                        (c, 1),
                    );
                    put_columns(head_h, d, dqkv, 3 * c, 2 * c + h * d);
                    // dweights[i, j] = dO_i·v_j, then through the softmax to the scores.
                    product(dw, (false, false), (p, p, d), d_head, (c, 1), v, (1, 3 * c));
                    for (g, w) in dw.chunks_exact_mut(p).zip(weights.chunks_exact(p)) {
                        backward_row(w, s.scale(), g);
                    }
                    // dq_i = Σ_j dscores[i, j]·k_j; dk_j = Σ_i dscores[i, j]·q_i.
                    product(head_h, (false, false), (p, d, p), dw, (p, 1), k, (3 * c, 1));
                    put_columns(head_h, d, dqkv, 3 * c, h * d);
                    product(head_h, (false, false), (p, d, p), dw, (1, p), q, (3 * c, 1));
                    put_columns(head_h, d, dqkv, 3 * c, c + h * d);
                }
                scratch::give(dw_buffer);
                scratch::give(head_buffer);
            });
        // The input projection: dWq = xᵀ·dqkv, dbq = Σ dqkv, dx = dqkv·Wqᵀ.
        let mut dwq = vec![0.0f32; c * 3 * c];
        product(
            &mut dwq,
            (false, true),
            (c, 3 * c, rows),
            x,
            (1, c),
            &dqkv,
            (3 * c, 1),
        );
        let dbq = column_sums(&dqkv, 3 * c);
        let mut dx = vec![0.0f32; rows * c];
        product(
            &mut dx,
            (false, true),
            (rows, c, 3 * c),
            &dqkv,
            (3 * c, 1),
            wq,
            (1, 3 * c),
        );
        (dx, (dwq, dbq), (dwp, dbp))
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{cast, record, values, FlexAutodiff};
    use super::kernels::{self, Kept, Shape};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::Flex;
    use burn::nn::Linear;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;

    /// The two projections' weights and biases: `[c, 3c]`, `[3c]`, `[c, c]`, `[c]`.
    type Params<B> = (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 2>, Tensor<B, 1>);

    /// The op for channels-last `f32` maps on `Flex`/`Autodiff<Flex>` with both biases and
    /// fitting shapes; `x` back otherwise.
    pub(super) fn attend<B: Backend>(
        x: Tensor<B, 4>,
        (qkv, proj): (&Linear<B>, &Linear<B>),
        heads: usize,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let (Some(bq), Some(bp)) = (&qkv.bias, &proj.bias) else {
            return Err(x);
        };
        let [n, h, w, c] = x.dims();
        let params: Params<B> = (qkv.weight.val(), bq.val(), proj.weight.val(), bp.val());
        let dtypes = [x.dtype(), params.0.dtype(), params.1.dtype()];
        let fits = params.0.dims() == [c, 3 * c]
            && params.1.dims() == [3 * c]
            && params.2.dims() == [c, c]
            && params.3.dims() == [c]
            && heads > 0
            && c.is_multiple_of(heads)
            && n * h * w * c > 0;
        if dtypes != [DType::F32; 3]
            || [params.2.dtype(), params.3.dtype()] != [DType::F32; 2]
            || !fits
        {
            return Err(x);
        }
        let s = Shape {
            n,
            p: h * w,
            c,
            heads,
        };
        let dims = [n, h, w, c];
        let x = match cast::<Tensor<B, 4>, Tensor<FlexAutodiff, 4>>(x) {
            Ok(x) => {
                let params = same_backend::<B, FlexAutodiff>(params);
                return Ok(cast(autodiff(x, params, s, dims)).unwrap_or_else(|_| unreachable!()));
            }
            Err(x) => x,
        };
        let x = cast::<Tensor<B, 4>, Tensor<Flex, 4>>(x)?;
        let (wq, bq, wp, bp) = same_backend::<B, Flex>(params);
        let prim = |t: TensorPrimitive<Flex>| t.tensor();
        let (x, wq, bq, wp, bp) = (
            prim(x.into_primitive()),
            prim(wq.into_primitive()),
            prim(bq.into_primitive()),
            prim(wp.into_primitive()),
            prim(bp.into_primitive()),
        );
        let (y, _) = forward(&x, [&wq, &bq, &wp, &bp], s);
        let y = FlexTensor::from_data(TensorData::new(y, dims));
        let y = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(y));
        Ok(cast(y).unwrap_or_else(|_| unreachable!()))
    }

    /// The parameters on backend `T`, which is `B` (the input's backend, checked by the caller).
    fn same_backend<B: Backend, T: Backend>(params: Params<B>) -> Params<T> {
        const SAME: &str = "the layers' tensors are on the input's backend";
        match (
            cast(params.0),
            cast(params.1),
            cast(params.2),
            cast(params.3),
        ) {
            (Ok(wq), Ok(bq), Ok(wp), Ok(bp)) => (wq, bq, wp, bp),
            _ => unreachable!("{SAME}"),
        }
    }

    fn forward(x: &FlexTensor, [wq, bq, wp, bp]: [&FlexTensor; 4], s: Shape) -> (Vec<f32>, Kept) {
        kernels::forward(
            &values(x),
            (&values(wq), &values(bq)),
            (&values(wp), &values(bp)),
            s,
        )
    }

    /// What the backward step keeps: the input and the weights (shared, not copied), the
    /// projections and attention weights, the shapes.
    #[derive(Clone, Debug)]
    struct Saved {
        x: FlexTensor,
        wq: FlexTensor,
        wp: FlexTensor,
        kept: Kept,
        shape: Shape,
        dims: [usize; 4],
    }

    #[derive(Debug)]
    struct AttentionBackward;

    impl Backward<Flex, 5> for AttentionBackward {
        type State = Saved;

        fn backward(self, ops: Ops<Saved, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
            let Saved {
                x,
                wq,
                wp,
                kept,
                shape: s,
                dims,
            } = ops.state;
            let grad = grads.consume::<Flex>(&ops.node);
            let (dx, (dwq, dbq), (dwp, dbp)) = kernels::backward(
                &values(&x),
                (&values(&wq), &values(&wp)),
                &kept,
                &values(&grad),
                s,
            );
            let c = s.c;
            let gradients = [
                (dx, dims.to_vec()),
                (dwq, vec![c, 3 * c]),
                (dbq, vec![3 * c]),
                (dwp, vec![c, c]),
                (dbp, vec![c]),
            ];
            for (node, (values, shape)) in ops.parents.into_iter().zip(gradients) {
                if let Some(node) = node {
                    let tensor = FlexTensor::from_data(TensorData::new(values, shape));
                    grads.register::<Flex>(node.id, tensor);
                }
            }
        }
    }

    fn autodiff(
        x: Tensor<FlexAutodiff, 4>,
        (wq, bq, wp, bp): Params<FlexAutodiff>,
        s: Shape,
        dims: [usize; 4],
    ) -> Tensor<FlexAutodiff, 4> {
        let (x, wq, bq, wp, bp) = (
            x.into_primitive().tensor(),
            wq.into_primitive().tensor(),
            bq.into_primitive().tensor(),
            wp.into_primitive().tensor(),
            bp.into_primitive().tensor(),
        );
        let tensors = [&wq.primitive, &bq.primitive, &wp.primitive, &bp.primitive];
        let (y, kept) = forward(&x.primitive, tensors, s);
        let y = FlexTensor::from_data(TensorData::new(y, dims));
        let state = || Saved {
            x: x.primitive.clone(),
            wq: wq.primitive.clone(),
            wp: wp.primitive.clone(),
            kept,
            shape: s,
            dims,
        };
        record(AttentionBackward, [&x, &wq, &bq, &wp, &bp], state, y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::nn::init_linear;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    type Ad = Autodiff<Flex>;

    /// The fused op against burn's composition on channels-last maps: the output and the
    /// gradients of the input and of both projections' weights and biases, on odd pixel counts
    /// and several head counts.
    #[test]
    fn matches_the_composition_and_its_gradients() {
        let device = Default::default();
        let mut rng = StdRng::seed_from_u64(17);
        for (n, h, w, c, heads) in [
            (3, 7, 7, 8, 2),
            (2, 4, 4, 12, 3),
            (5, 3, 5, 16, 4),
            (1, 1, 1, 4, 1),
        ] {
            let qkv = init_linear::<Ad>(c, 3 * c, &mut rng, &device);
            let proj = init_linear::<Ad>(c, c, &mut rng, &device);
            let x = Tensor::<Ad, 4>::random([n, h, w, c], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let probe = Tensor::<Ad, 4>::random([n, h, w, c], Distribution::Default, &device);
            let last = Layout::ChannelsLast;
            let fused = self_attention(x.clone(), (&qkv, &proj), heads, None, last);
            let plain = composed(x.clone(), (&qkv, &proj), heads, None, last);
            let tolerance = Tolerance::rel_abs(1e-4, 1e-5);
            let case = format!("{:?}", (n, h, w, c, heads));
            fused
                .to_data()
                .assert_approx_eq::<f32>(&plain.to_data(), tolerance);
            let gf = (fused * probe.clone()).sum().backward();
            let gp = (plain * probe).sum().backward();
            let compare = |what: &str, f: Option<TensorData>, p: Option<TensorData>| {
                let (f, p) = (f.expect(what), p.expect(what));
                assert_eq!(f.shape, p.shape, "{what} of {case}");
                f.assert_approx_eq::<f32>(&p, tolerance);
            };
            use burn::tensor::TensorData;
            compare(
                "dx",
                x.grad(&gf).map(|t| t.into_data()),
                x.grad(&gp).map(|t| t.into_data()),
            );
            for (name, layer) in [("qkv", &qkv), ("proj", &proj)] {
                let weight = layer.weight.val();
                let bias = layer.bias.as_ref().expect("bias").val();
                compare(
                    name,
                    weight.grad(&gf).map(|t| t.into_data()),
                    weight.grad(&gp).map(|t| t.into_data()),
                );
                compare(
                    name,
                    bias.grad(&gf).map(|t| t.into_data()),
                    bias.grad(&gp).map(|t| t.into_data()),
                );
            }
        }
    }

    /// The inference backend takes the fused forward pass too.
    #[test]
    fn inference_backend_takes_the_fused_forward_pass() {
        let device = Default::default();
        let mut rng = StdRng::seed_from_u64(18);
        let (qkv, proj) = (
            init_linear::<Flex>(8, 24, &mut rng, &device),
            init_linear::<Flex>(8, 8, &mut rng, &device),
        );
        let x = Tensor::<Flex, 4>::random([2, 5, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let last = Layout::ChannelsLast;
        self_attention(x.clone(), (&qkv, &proj), 4, None, last)
            .into_data()
            .assert_approx_eq::<f32>(
                &composed(x, (&qkv, &proj), 4, None, last).into_data(),
                Tolerance::rel_abs(1e-4, 1e-5),
            );
    }
}
