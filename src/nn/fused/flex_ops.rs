//! What the fused flex ops (`silu`, `linear_silu`) share: reaching the flex tensor behind a
//! generic `Tensor<B, D>`, and reading its values.

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
