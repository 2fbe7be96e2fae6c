//! The workers' gradient sum, in a fixed order, through burn-collective's all-reduce.
//!
//! burn-collective sums the peers' tensors in the order of a hash map, which changes from run
//! to run: with three or more workers the rounding would differ, and a resumed run would not
//! repeat an uninterrupted one. So each worker puts its gradient in its own row of a
//! `[workers, len + 1]` tensor of zeros (the last column flags that it has one), the
//! all-reduce sums those (each value meets only exact zeros: no rounding), and every worker
//! adds the rows in worker order. The cost is `workers`× the values of a plain all-reduce.

use burn::collective::{all_reduce, PeerId, ReduceOperation};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

/// Sums `grads` (this worker's, of `net`'s parameters) over the `workers` peers, worker 0's
/// first; worker 0 gets the sum, the others an empty set (they take part in the all-reduce
/// only). A parameter no worker has a gradient for stays without one, as with one worker.
pub(super) fn ordered_sum<B, M>(
    net: &M,
    grads: GradientsParams,
    worker: usize,
    workers: usize,
) -> std::result::Result<GradientsParams, String>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let mut visitor = OrderedSum::<B> {
        own: grads,
        sum: GradientsParams::new(),
        worker,
        workers,
        error: None,
        _backend: std::marker::PhantomData,
    };
    // Every worker visits the same parameters in the same order (the replicas share one
    // structure), so their all-reduce calls pair up.
    net.visit(&mut visitor);
    match visitor.error {
        Some(error) => Err(error),
        None => Ok(visitor.sum),
    }
}

struct OrderedSum<B: AutodiffBackend> {
    own: GradientsParams,
    sum: GradientsParams,
    worker: usize,
    workers: usize,
    error: Option<String>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for OrderedSum<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.error.is_some() {
            // The run fails; the peers' waits end when the trainer resets the collective.
            return;
        }
        let id = param.id;
        let value = param.val();
        let (shape, device) = (value.shape(), value.device());
        let len = shape.num_elements();
        let (workers, k) = (self.workers, self.worker);
        let mut slots = Tensor::<B::InnerBackend, 2>::zeros([workers, len + 1], &device);
        if let Some(grad) = self.own.remove::<B::InnerBackend, D>(id) {
            slots = slots
                .slice_assign([k..k + 1, 0..len], grad.reshape([1, len]))
                .slice_assign([k..k + 1, len..len + 1], Tensor::ones([1, 1], &device));
        }
        let reduced = match all_reduce::<B::InnerBackend>(
            PeerId::from(k as u32),
            slots.into_primitive().tensor(),
            ReduceOperation::Sum,
        ) {
            Ok(reduced) => {
                Tensor::<B::InnerBackend, 2>::from_primitive(TensorPrimitive::Float(reduced))
            }
            Err(e) => {
                self.error = Some(format!("all-reduce of parameter {id}: {e:?}"));
                return;
            }
        };
        // Only worker 0's sum is used (the trainer applies it): the others stop here.
        if self.worker != 0 {
            return;
        }
        let holders: f64 = reduced
            .clone()
            .slice([0..workers, len..len + 1])
            .sum()
            .into_scalar()
            .elem();
        if holders == 0.0 {
            return;
        }
        let mut sum = reduced.clone().slice([0..1, 0..len]);
        for row in 1..workers {
            sum = sum + reduced.clone().slice([row..row + 1, 0..len]);
        }
        self.sum
            .register::<B::InnerBackend, D>(id, sum.reshape(shape));
    }
}
