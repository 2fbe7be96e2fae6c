//! Exponential moving average of a module's weights.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor};
use std::collections::HashMap;

/// The EMA decay at `step` (0-based): `min(decay, (1 + step)/(10 + step))` when warming up.
pub(crate) fn decay_at(decay: f64, warmup: bool, step: usize) -> f64 {
    if warmup {
        decay.min((1.0 + step as f64) / (10.0 + step as f64))
    } else {
        decay
    }
}

/// `ema ← decay·ema + (1 − decay)·model`, parameter by parameter (matched by id: the EMA
/// starts as a clone of the model, which keeps the ids).
pub(crate) fn update<B: Backend, M: Module<B>>(ema: M, model: &M, decay: f64) -> M {
    let mut current = Collect::default();
    model.visit(&mut current);
    ema.map(&mut Blend {
        current: current.0,
        decay,
    })
}

#[derive(Default)]
struct Collect<B: Backend>(HashMap<ParamId, Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.insert(param.id, param.val().flatten(0, D - 1));
    }
}

struct Blend<B: Backend> {
    current: HashMap<ParamId, Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, value, mapper) = param.consume();
        let value = match self.current.remove(&id) {
            Some(current) => {
                let shape = value.shape();
                value.mul_scalar(self.decay) + current.reshape(shape).mul_scalar(1.0 - self.decay)
            }
            None => value,
        };
        Param::from_mapped_value(id, value, mapper)
    }
}
