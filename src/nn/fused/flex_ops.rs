//! What the fused flex ops (`silu`, `linear_silu`, `conv2d`) share: reaching the flex tensor
//! behind a generic `Tensor<B, D>`, reading its values, and gemm's matrix product.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
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

/// The `f32` values of `t` in logical (row-major) order, borrowed where they already are,
/// copied from a strided or offset view otherwise. The callers check the dtype first.
pub(crate) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(
            t.to_contiguous()
                .into_data()
                .into_vec::<f32>()
                .unwrap_or_default(),
        ),
    }
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
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    // The checks that make the pointer arithmetic below stay inside the slices.
    assert!(dst.len() >= m * n, "product: destination too small");
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
