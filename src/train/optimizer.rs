//! The optimizer (Adam or AdamW), its learning-rate schedule and gradient clipping.

use super::checkpoint::RecordBytes;
use super::config::{LrDecay, OptimizerConfig, OptimizerKind};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdamW, AdamWConfig, AdaptiveMomentumState, GradientsParams,
    LearningRate, Optimizer, SimpleOptimizer,
};
use burn::record::{Recorder, RecorderError};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// burn's Adam with its update fused into one pass per parameter on the default CPU backend
/// (`nn::fused`: the moments and the parameter in place, on rayon's threads), the same
/// arithmetic in the same order; burn's own `Adam` on every other backend. Its state is burn's
/// `AdamState`, so checkpoints are the same either way. The trainer uses it for
/// [`OptimizerKind::Adam`]; `init` makes the optimizer for a module of your own.
///
/// ```
/// use burn::optim::Optimizer;
/// use integration_flow::backend::CpuAutodiff;
/// use integration_flow::nn::{Mlp, MlpConfig};
/// use integration_flow::train::FusedAdam;
/// let mut optim = FusedAdam::new(0.9, 0.999, 1e-8, 0.0).init::<CpuAutodiff, Mlp<CpuAutodiff>>();
/// # let _ = &mut optim;
/// ```
#[derive(Clone)]
pub struct FusedAdam {
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    /// The L2 penalty (weight decay added to the gradient).
    penalty: f32,
    inner: Adam,
}

impl std::fmt::Debug for FusedAdam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedAdam")
            .field("beta1", &self.beta1)
            .field("beta2", &self.beta2)
            .field("epsilon", &self.epsilon)
            .field("penalty", &self.penalty)
            .finish()
    }
}

impl FusedAdam {
    /// Adam with `β₁`, `β₂`, `ε` and the L2 weight decay `penalty` (0 for none).
    pub fn new(beta1: f32, beta2: f32, epsilon: f32, penalty: f32) -> Self {
        let decay = (penalty > 0.0).then(|| WeightDecayConfig::new(penalty));
        let inner = AdamConfig::new()
            .with_beta_1(beta1)
            .with_beta_2(beta2)
            .with_epsilon(epsilon)
            .with_weight_decay(decay)
            .build();
        FusedAdam {
            beta1,
            beta2,
            epsilon,
            penalty: if penalty > 0.0 { penalty } else { 0.0 },
            inner,
        }
    }

    /// The optimizer for module `M` on backend `B`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let moments = state.map(|s| (s.momentum.moment_1, s.momentum.moment_2));
        let step = crate::nn::AdamStep {
            lr: lr as f32,
            beta1: self.beta1,
            beta2: self.beta2,
            epsilon: self.epsilon,
            penalty: self.penalty,
            time: i32::try_from(time).unwrap_or(i32::MAX),
        };
        match crate::nn::adam_update((tensor, grad, moments), step) {
            Ok((tensor, m, v)) => {
                let momentum = AdaptiveMomentumState::new(time, m, v);
                (tensor, Some(AdamState::new(momentum)))
            }
            Err((tensor, grad, moments)) => {
                let state = moments
                    .map(|(m, v)| AdamState::new(AdaptiveMomentumState::new(time - 1, m, v)));
                self.inner.step(lr, tensor, grad, state)
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <Adam as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// The optimizer of a run, with its state (moments, step count).
pub(super) enum Optim<B: AutodiffBackend, N: AutodiffModule<B>> {
    Adam(OptimizerAdaptor<FusedAdam, N, B>),
    AdamW(OptimizerAdaptor<AdamW, N, B>),
}

impl<B: AutodiffBackend, N: AutodiffModule<B>> Optim<B, N> {
    /// A fresh optimizer as `config` says.
    pub(super) fn new(o: &OptimizerConfig) -> Self {
        match o.kind {
            OptimizerKind::Adam => Optim::Adam(
                FusedAdam::new(
                    o.beta1 as f32,
                    o.beta2 as f32,
                    o.epsilon as f32,
                    o.weight_decay as f32,
                )
                .init(),
            ),
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

/// The learning rate at `step` of a run of `steps`: a linear warm-up from 0 to the peak, then
/// the peak or its decay ([`LrDecay`]).
pub(super) fn lr_at(config: &OptimizerConfig, step: usize, steps: usize) -> f64 {
    let warmup = config.warmup_steps;
    if step < warmup {
        return config.lr * (step + 1) as f64 / warmup as f64;
    }
    match config.decay {
        LrDecay::Constant => config.lr,
        LrDecay::Cosine { floor } => {
            // 0 at the first step after the warm-up, 1 at the run's last step.
            let span = steps.saturating_sub(warmup + 1).max(1) as f64;
            let progress = ((step - warmup) as f64 / span).min(1.0);
            let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            config.lr * (floor + (1.0 - floor) * cosine)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_warms_up_then_holds_or_falls_by_half_a_cosine() {
        let constant = OptimizerConfig {
            lr: 1e-3,
            warmup_steps: 10,
            ..Default::default()
        };
        assert!((lr_at(&constant, 0, 100) - 1e-4).abs() < 1e-15);
        assert_eq!(lr_at(&constant, 9, 100), 1e-3);
        assert_eq!(lr_at(&constant, 99, 100), 1e-3);
        let cosine = OptimizerConfig {
            decay: LrDecay::Cosine { floor: 0.1 },
            ..constant
        };
        // The warm-up is the same; the peak right after it, the floor at the last step.
        assert_eq!(lr_at(&cosine, 4, 100), lr_at(&constant, 4, 100));
        assert!((lr_at(&cosine, 10, 100) - 1e-3).abs() < 1e-15);
        assert!((lr_at(&cosine, 99, 100) - 1e-4).abs() < 1e-15);
        // Halfway between the two, the middle of the range; falling all the way.
        let middle = lr_at(&cosine, 10 + 89 / 2, 100);
        assert!((middle - 0.55e-3).abs() < 2e-5, "{middle}");
        let rates: Vec<f64> = (10..100).map(|s| lr_at(&cosine, s, 100)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]));
        // Steps past the run's end (a resumed run given more) stay at the floor.
        assert!((lr_at(&cosine, 150, 100) - 1e-4).abs() < 1e-15);
    }
}
