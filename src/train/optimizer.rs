//! The optimizer (Adam or AdamW), its learning-rate schedule and gradient clipping.

use super::checkpoint::RecordBytes;
use super::config::{OptimizerConfig, OptimizerKind};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{Recorder, RecorderError};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

/// The optimizer of a run, with its state (moments, step count).
pub(super) enum Optim<B: AutodiffBackend, N: AutodiffModule<B>> {
    Adam(OptimizerAdaptor<Adam, N, B>),
    AdamW(OptimizerAdaptor<AdamW, N, B>),
}

impl<B: AutodiffBackend, N: AutodiffModule<B>> Optim<B, N> {
    /// A fresh optimizer as `config` says.
    pub(super) fn new(o: &OptimizerConfig) -> Self {
        match o.kind {
            OptimizerKind::Adam => {
                let decay =
                    (o.weight_decay > 0.0).then(|| WeightDecayConfig::new(o.weight_decay as f32));
                Optim::Adam(
                    AdamConfig::new()
                        .with_beta_1(o.beta1 as f32)
                        .with_beta_2(o.beta2 as f32)
                        .with_epsilon(o.epsilon as f32)
                        .with_weight_decay(decay)
                        .init(),
                )
            }
            OptimizerKind::AdamW => Optim::AdamW(
                AdamWConfig::new()
                    .with_beta_1(o.beta1 as f32)
                    .with_beta_2(o.beta2 as f32)
                    .with_epsilon(o.epsilon as f32)
                    .with_weight_decay(o.weight_decay as f32)
                    .init(),
            ),
        }
    }

    /// One update of `net` by `grads` at learning rate `lr`.
    pub(super) fn step(&mut self, lr: f64, net: N, grads: GradientsParams) -> N {
        match self {
            Optim::Adam(opt) => opt.step(lr, net, grads),
            Optim::AdamW(opt) => opt.step(lr, net, grads),
        }
    }

    /// The optimizer state as bytes, for a checkpoint.
    pub(super) fn to_bytes(&self) -> Result<Vec<u8>, RecorderError> {
        let bytes = RecordBytes::default();
        match self {
            Optim::Adam(o) => Recorder::<B>::record(&bytes, o.to_record(), ()),
            Optim::AdamW(o) => Recorder::<B>::record(&bytes, o.to_record(), ()),
        }
    }

    /// The same optimizer with the state `bytes` (of [`to_bytes`](Self::to_bytes)) loaded.
    pub(super) fn load_bytes(
        self,
        bytes: Vec<u8>,
        device: &B::Device,
    ) -> Result<Self, RecorderError> {
        let recorder = RecordBytes::default();
        Ok(match self {
            Optim::Adam(o) => {
                Optim::Adam(o.load_record(Recorder::<B>::load(&recorder, bytes, device)?))
            }
            Optim::AdamW(o) => {
                Optim::AdamW(o.load_record(Recorder::<B>::load(&recorder, bytes, device)?))
            }
        })
    }
}

/// The learning rate at `step`: the peak rate after a linear warm-up from 0.
pub(super) fn lr_at(config: &OptimizerConfig, step: usize) -> f64 {
    let warmup = if config.warmup_steps == 0 {
        1.0
    } else {
        ((step + 1) as f64 / config.warmup_steps as f64).min(1.0)
    };
    config.lr * warmup
}

/// The global L2 norm of the gradients, and the gradients scaled down to `max_norm` if above.
pub(super) fn clip_global_norm<B: AutodiffBackend, N: AutodiffModule<B>>(
    net: &N,
    mut grads: GradientsParams,
    max_norm: Option<f64>,
) -> (GradientsParams, f64) {
    struct SumSquares<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut sum = SumSquares::<B> {
        grads: &grads,
        total: None,
    };
    net.visit(&mut sum);
    let norm = sum.total.map_or(0.0, |t| {
        let v: f64 = t.into_scalar().elem();
        v.sqrt()
    });
    if let Some(max) = max_norm {
        if norm.is_finite() && norm > max {
            net.visit(&mut Scale {
                grads: &mut grads,
                factor: max / norm,
            });
        }
    }
    (grads, norm)
}
