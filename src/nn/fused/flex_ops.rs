//! What the fused flex ops (`silu`, `linear_silu`, `conv2d`) share: reaching the flex tensor
//! behind a generic `Tensor<B, D>`, reading its values, and gemm's matrix product.

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::any::Any;
use std::borrow::Cow;

/// `Ok(u)` if `T` is `U` (the same value, moved), `Err(t)` otherwise. This is how a function
/// generic over `B: Backend` takes a flex-only path without a trait bound on `B`.
pub(crate) fn cast<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(boxed) => Err(*boxed
            .downcast::<T>()
            .expect("a box that does not hold a U still holds the T put in it")),
    }
}

/// `Autodiff<Flex>`, the training backend the fused ops have their own backward step on.
pub(crate) type FlexAutodiff = Autodiff<Flex>;

/// A layer op's two fast paths: `autodiff` where the input, its weight and its bias are on
/// `Autodiff<Flex>`, `inference` (on the bare flex tensors) where they are on `Flex`, and the
/// input back on any other backend.
pub(crate) fn on_flex<B: Backend, const D: usize, const W: usize, const O: usize>(
    (x, weight, bias): (Tensor<B, D>, Tensor<B, W>, Tensor<B, 1>),
    autodiff: impl FnOnce(
        Tensor<FlexAutodiff, D>,
        Tensor<FlexAutodiff, W>,
        Tensor<FlexAutodiff, 1>,
    ) -> Tensor<FlexAutodiff, O>,
    inference: impl FnOnce(FlexTensor, FlexTensor, FlexTensor) -> FlexTensor,
) -> Result<Tensor<B, O>, Tensor<B, D>> {
    const SAME: &str = "the layer's tensors are on the input's backend";
    let x = match cast::<Tensor<B, D>, Tensor<FlexAutodiff, D>>(x) {
        Ok(x) => {
            let (Ok(weight), Ok(bias)) = (cast(weight), cast(bias)) else {
                unreachable!("{SAME}")
            };
            return Ok(cast(autodiff(x, weight, bias)).unwrap_or_else(|_| unreachable!()));
        }
        Err(x) => x,
    };
    let x = cast::<Tensor<B, D>, Tensor<Flex, D>>(x)?;
    let (Ok(weight), Ok(bias)) = (
        cast::<Tensor<B, W>, Tensor<Flex, W>>(weight),
        cast::<Tensor<B, 1>, Tensor<Flex, 1>>(bias),
    ) else {
        unreachable!("{SAME}")
    };
    let prim = |t: TensorPrimitive<Flex>| t.tensor();
    let y = inference(
        prim(x.into_primitive()),
        prim(weight.into_primitive()),
        prim(bias.into_primitive()),
    );
    let y = Tensor::<Flex, O>::from_primitive(TensorPrimitive::Float(y));
    Ok(cast(y).unwrap_or_else(|_| unreachable!()))
}

/// A one-input op's two fast paths, as [`on_flex`]: `autodiff` on `Autodiff<Flex>`,
/// `inference` on the bare flex tensor on `Flex`, the input back on any other backend.
pub(crate) fn on_flex_unary<B: Backend, const D: usize, const O: usize>(
    x: Tensor<B, D>,
    autodiff: impl FnOnce(Tensor<FlexAutodiff, D>) -> Tensor<FlexAutodiff, O>,
    inference: impl FnOnce(FlexTensor) -> FlexTensor,
) -> Result<Tensor<B, O>, Tensor<B, D>> {
    let x = match cast::<Tensor<B, D>, Tensor<FlexAutodiff, D>>(x) {
        Ok(x) => return Ok(cast(autodiff(x)).unwrap_or_else(|_| unreachable!())),
        Err(x) => x,
    };
    let x = cast::<Tensor<B, D>, Tensor<Flex, D>>(x)?;
    let y = inference(x.into_primitive().tensor());
    let y = Tensor::<Flex, O>::from_primitive(TensorPrimitive::Float(y));
    Ok(cast(y).unwrap_or_else(|_| unreachable!()))
}

/// A two-input op's two fast paths, as [`on_flex`]; both inputs back on any other backend.
pub(crate) fn on_flex_pair<B: Backend, const D: usize, const E: usize, const O: usize>(
    (a, b): (Tensor<B, D>, Tensor<B, E>),
    autodiff: impl FnOnce(Tensor<FlexAutodiff, D>, Tensor<FlexAutodiff, E>) -> Tensor<FlexAutodiff, O>,
    inference: impl FnOnce(FlexTensor, FlexTensor) -> FlexTensor,
) -> Result<Tensor<B, O>, (Tensor<B, D>, Tensor<B, E>)> {
    const SAME: &str = "both inputs are on one backend";
    let a = match cast::<Tensor<B, D>, Tensor<FlexAutodiff, D>>(a) {
        Ok(a) => {
            let Ok(b) = cast::<Tensor<B, E>, Tensor<FlexAutodiff, E>>(b) else {
                unreachable!("{SAME}")
            };
            return Ok(cast(autodiff(a, b)).unwrap_or_else(|_| unreachable!()));
        }
        Err(a) => a,
    };
    let (a, b) = match (
        cast::<Tensor<B, D>, Tensor<Flex, D>>(a),
        cast::<Tensor<B, E>, Tensor<Flex, E>>(b),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(a), Err(b)) => return Err((a, b)),
        _ => unreachable!("{SAME}"),
    };
    let y = inference(a.into_primitive().tensor(), b.into_primitive().tensor());
    let y = Tensor::<Flex, O>::from_primitive(TensorPrimitive::Float(y));
    Ok(cast(y).unwrap_or_else(|_| unreachable!()))
}

/// Whether `B` is `Flex` or `Autodiff<Flex>`, the backends the fused kernels run on.
pub(crate) fn is_flex<B: Backend>() -> bool {
    let b = std::any::TypeId::of::<B>();
    b == std::any::TypeId::of::<Flex>() || b == std::any::TypeId::of::<FlexAutodiff>()
}

/// An autodiff tensor's primitive: the flex tensor and its node in the graph.
pub(crate) type Tracked = burn::tensor::ops::FloatTensor<FlexAutodiff>;

/// A fused op's output `y` recorded on the autodiff graph as the result of `op` on `parents`;
/// `state` (what the backward step reads) is made only where some parent needs a gradient.
pub(crate) fn record<O: Backward<Flex, N>, const N: usize, const D: usize>(
    op: O,
    parents: [&Tracked; N],
    state: impl FnOnce() -> O::State,
    y: FlexTensor,
) -> Tensor<FlexAutodiff, D> {
    let nodes = parents.map(|p| p.node.clone());
    let out = match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The `f32` values of `t` in logical (row-major) order, borrowed where they already are,
/// copied from a strided or offset view otherwise. The callers check the dtype first.
pub(crate) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    if let Some(slice) = t.as_slice::<f32>() {
        return Cow::Borrowed(slice);
    }
    let layout = t.layout();
    Cow::Owned(strided_copy(
        t.storage::<f32>(),
        layout.shape(),
        layout.strides(),
        layout.start_offset(),
    ))
}

/// `f` on the values of `t` (in logical order) and the tensor back, changed: in `t`'s own buffer
/// where it is contiguous and nobody else holds it (an incoming gradient, usually), on a copy
/// otherwise.
pub(crate) fn update_values(mut t: FlexTensor, f: impl FnOnce(&mut [f32])) -> FlexTensor {
    let len = t.layout().num_elements();
    let whole = matches!(t.layout().contiguous_offsets(), Some((0, end)) if end == len);
    if whole {
        if let Some(values) = t.try_storage_mut::<f32>() {
            if values.len() == len {
                f(values);
                return t;
            }
        }
    }
    let mut values = values(&t).into_owned();
    f(&mut values);
    FlexTensor::from_data(burn::tensor::TensorData::new(
        values,
        t.layout().shape().clone(),
    ))
}

/// A new vector of `len` values made in pieces of `piece` values on rayon's threads, one piece
/// per item of `items`: `each(piece, item)` writes the piece (handed over zeroed) and returns
/// what else it computed; the vector and those results in order.
///
/// `vec![0.0; len]` zero-fills the whole output on the calling thread, in a pass of its own
/// over memory, before the parallel work begins (with the outputs of a training step that was
/// `memset` at 5–7% of the UNet step, most of it on the thread that runs the graph). Here each
/// piece is zeroed by the thread that fills it, just before, while it comes into that core's
/// cache anyway.
///
/// # Panics
/// Where the pieces (`len.div_ceil(piece)`) and the items do not pair one to one (an internal
/// caller's bug).
pub(crate) fn par_vec_map<T: Send, R: Send>(
    len: usize,
    piece: usize,
    items: impl IndexedParallelIterator<Item = T>,
    each: impl Fn(&mut [f32], T) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    let specs = [(len, piece, &[][..])];
    let ([values], results) = par_vecs_map(specs, items, |[piece], item| each(piece, item));
    (values, results)
}

/// The start of a vector that [`par_vecs_map`] fills from several threads, each through its own
/// disjoint piece.
#[derive(Clone, Copy)]
struct Base(*mut f32);

// SAFETY: the threads that share a `Base` write disjoint pieces of the vector behind it (see
// `par_vecs_map`), which outlives them.
unsafe impl Send for Base {}
// SAFETY: as above.
unsafe impl Sync for Base {}

/// [`par_vec_map`] for `K` vectors at once: `specs[k]` is the `(len, piece, pattern)` of vector
/// `k`, and `each` gets the pieces of all `K` that pair with its item, each filled with
/// `pattern` repeated (zeros where it is empty: a product's bias rows, say, instead of zeros
/// overwritten). A vector of length 0 has an empty piece for every item.
///
/// # Panics
/// As [`par_vec_map`], for each vector that is not empty.
pub(crate) fn par_vecs_map<const K: usize, T: Send, R: Send>(
    specs: [(usize, usize, &[f32]); K],
    items: impl IndexedParallelIterator<Item = T>,
    each: impl Fn([&mut [f32]; K], T) -> R + Sync + Send,
) -> ([Vec<f32>; K], Vec<R>) {
    let count = items.len();
    for (len, piece, _) in specs {
        assert!(
            len == 0 || len.div_ceil(piece.max(1)) == count,
            "par_vecs_map: pieces and items"
        );
    }
    let mut vectors: [Vec<f32>; K] = std::array::from_fn(|k| Vec::with_capacity(specs[k].0));
    // Where each vector's memory starts, shared with the threads that fill the pieces.
    let bases: [Base; K] = std::array::from_fn(|k| Base(vectors[k].as_mut_ptr()));
    let results = items
        .enumerate()
        .map(|(i, item)| {
            let pieces: [&mut [f32]; K] = std::array::from_fn(|k| {
                let (len, piece, pattern) = (specs[k].0, specs[k].1.max(1), specs[k].2);
                let start = (i * piece).min(len);
                let end = (start + piece).min(len);
                // SAFETY: `start..end` lies within the vector's capacity (`len` values), and the
                // item `i` alone gets these values of vector `k` (the items' ranges are
                // disjoint), so no other reference to them exists; every value is written
                // below before the slice is read as `f32`.
                unsafe {
                    let ptr = bases[k].0.cast::<std::mem::MaybeUninit<f32>>().add(start);
                    let piece = std::slice::from_raw_parts_mut(ptr, end - start);
                    match pattern.is_empty() {
                        true => piece.fill(std::mem::MaybeUninit::new(0.0)),
                        false => {
                            for run in piece.chunks_mut(pattern.len()) {
                                for (value, &p) in run.iter_mut().zip(pattern) {
                                    value.write(p);
                                }
                            }
                        }
                    }
                    &mut *(piece as *mut [std::mem::MaybeUninit<f32>] as *mut [f32])
                }
            });
            each(pieces, item)
        })
        .collect();
    for (vector, (len, _, _)) in vectors.iter_mut().zip(specs) {
        // SAFETY: the items' pieces cover the first `len` values of every non-empty vector (as
        // many pieces as items, asserted above), each written; a panic in `each` leaves the
        // vectors empty instead.
        unsafe { vector.set_len(len) };
    }
    (vectors, results)
}

/// The values of a strided view in row-major order. flex's own copy walks a view of more than
/// two (merged) dimensions element by element (the incoming gradients of the fused ops are
/// often such views: slices of a concatenation's gradient, swapped dimensions); here the
/// dimensions that are contiguous in memory are merged and the innermost run is copied whole.
fn strided_copy(src: &[f32], shape: &[usize], strides: &[isize], offset: usize) -> Vec<f32> {
    let len: usize = shape.iter().product();
    let mut out = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    // Merge each dimension into the next where that spans it exactly; drop size-1 dimensions.
    let mut dims: Vec<(usize, isize)> = Vec::with_capacity(shape.len());
    for (&size, &stride) in shape.iter().zip(strides).filter(|(&size, _)| size != 1) {
        match dims.last_mut() {
            Some(last) if last.1 == stride * size as isize => *last = (last.0 * size, stride),
            _ => dims.push((size, stride)),
        }
    }
    let Some(&(inner, inner_stride)) = dims.last() else {
        out.push(src[offset]);
        return out;
    };
    let outer = &dims[..dims.len() - 1];
    let mut index = vec![0usize; outer.len()];
    let mut base = offset as isize;
    loop {
        let start = base as usize;
        if inner_stride == 1 {
            out.extend_from_slice(&src[start..start + inner]);
        } else {
            out.extend((0..inner).map(|i| src[(base + i as isize * inner_stride) as usize]));
        }
        // The next outer index, last dimension fastest.
        let mut k = outer.len();
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            index[k] += 1;
            base += outer[k].1;
            if index[k] < outer[k].0 {
                break;
            }
            base -= outer[k].1 * outer[k].0 as isize;
            index[k] = 0;
        }
    }
}

/// `Σ term(xᵢ)` in eight interleaved partial sums, which the compiler turns into vector adds
/// (a plain `iter().sum()` must keep the order of the additions and runs one at a time).
fn lane_sum(x: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|&v| term(v)).sum();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += term(v);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `Σ x`, as [`lane_sum`].
pub(crate) fn sum(x: &[f32]) -> f32 {
    lane_sum(x, |v| v)
}

/// `Σ (x − c)²`, as [`lane_sum`].
pub(crate) fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
    lane_sum(x, |v| (v - c) * (v - c))
}

/// `Σ aᵢ·bᵢ`, in eight partial sums as [`lane_sum`].
pub(crate) fn dot_product(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in ca.zip(cb) {
        for ((l, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *l += a * b;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// A core's L2 cache in bytes, as Linux reports it (`/sys/devices/system/cpu/cpu0/cache`), or
/// 1 MiB where it cannot be read; read once.
pub(crate) fn l2_cache_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
        (0..8)
            .filter_map(|i| {
                let index = dir.join(format!("index{i}"));
                let read = |name: &str| std::fs::read_to_string(index.join(name)).ok();
                let level = read("level")?;
                (level.trim() == "2")
                    .then(|| parse_size(&read("size")?))
                    .flatten()
            })
            .next()
            .unwrap_or(1 << 20)
    })
}

/// `"2048K"`, `"1M"` or `"524288"` in bytes.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (number, scale) = match text.chars().last()? {
        'K' | 'k' => (&text[..text.len() - 1], 1 << 10),
        'M' | 'm' => (&text[..text.len() - 1], 1 << 20),
        _ => (text, 1),
    };
    number
        .parse::<usize>()
        .ok()
        .map(|n| n * scale)
        .filter(|&n| n > 0)
}

/// Whether a product of this size is worth both threads (flex's own threshold).
pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst (m×n, row-major) := [dst +] a·b`, where `a` is m×k and `b` is k×n, each given by
/// its row and column strides; on rayon's threads if `threads` and the product is large.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    dst: &mut [f32],
    (accumulate, threads): (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    // Saturating: an index that overflowed would wrap and pass the checks below.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        ((rows.max(1) - 1).saturating_mul(rs)).saturating_add((cols.max(1) - 1).saturating_mul(cs))
    };
    // The checks that make the pointer arithmetic below stay inside the slices.
    assert!(
        dst.len() >= m.saturating_mul(n),
        "product: destination too small"
    );
    assert!(m == 0 || k == 0 || last(m, k, a_rs, a_cs) < a.len());
    assert!(n == 0 || k == 0 || last(k, n, b_rs, b_cs) < b.len());
    // SAFETY: every index gemm reads or writes, (i·rs + j·cs) for i, j within the stated
    // dimensions, is inside its slice by the assertions above; dst does not alias a or b
    // (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if threads {
                parallelism(m, n, k)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_size("2048K\n"), Some(2 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("524288"), Some(524288));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("0K"), None);
        assert!(l2_cache_bytes() >= 1 << 10);
    }

    /// Pieces come zeroed or filled with their pattern, each item gets its own, and an empty
    /// vector gives empty pieces; the results come back in the items' order.
    #[test]
    fn vectors_made_in_pieces() {
        let specs = [
            (10, 4, &[][..]),
            (15, 6, &[1.0, 2.0, 3.0][..]),
            (0, 1, &[][..]),
        ];
        let ([a, b, c], results) =
            par_vecs_map(specs, (0..3usize).into_par_iter(), |[a, b, c], i| {
                assert!(a.iter().all(|&v| v == 0.0) && c.is_empty());
                assert_eq!(b[..3], [1.0, 2.0, 3.0]);
                a.iter_mut().for_each(|v| *v = i as f32);
                b[0] = -(i as f32);
                i * 10
            });
        assert_eq!(results, [0, 10, 20]);
        assert_eq!(a, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(b[..7], [-0.0, 2.0, 3.0, 1.0, 2.0, 3.0, -1.0]);
        assert_eq!((b.len(), c.len()), (15, 0));
    }

    /// Views of every kind (permuted, sliced, expanded, flipped) read in logical order.
    #[test]
    fn strided_views_read_in_logical_order() {
        let device = Default::default();
        let t = Tensor::<Flex, 4>::random([3, 5, 4, 6], Distribution::Default, &device);
        let views = [
            t.clone().swap_dims(1, 2),
            t.clone().permute([0, 3, 1, 2]).swap_dims(2, 3),
            t.clone().narrow(1, 1, 3).narrow(3, 2, 3).repeat_dim(0, 1),
            t.clone()
                .slice([0..3, 0..5, 0..1, 0..6])
                .expand([3, 5, 4, 6]),
            t.clone().flip([2]),
        ];
        for view in views {
            let expected = view.to_data().to_vec::<f32>().expect("f32");
            let prim = view.into_primitive().tensor();
            assert_eq!(values(&prim).into_owned(), expected);
        }
    }
}
