//! A step's batch: its draws (examples, times, noise, target times), and the estimate and
//! target on any of its rows — the whole batch with one worker, a shard with several
//! ([`parallel`](super::parallel)), so that both see the same draws.

use super::config::TrainConfig;
use super::loss;
use super::objective::{self, ObjectiveConfig};
use crate::error::{Error, Result};
use crate::flow::ProbabilityFlowExt;
use crate::model::{Classes, IntegrationFlow};
use crate::nn::IntegrationNet;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use std::ops::Range;

/// Rows of a step's batch: everything the estimate needs, as host values.
#[derive(Clone, Debug)]
pub(crate) struct Rows {
    /// Values per example.
    pub(crate) dim: usize,
    /// The training times.
    pub(crate) t: Vec<f64>,
    /// The flow map's target times (empty for the other objectives).
    pub(crate) r: Vec<f64>,
    /// The flow map's rows whose jump is known (empty for the other objectives).
    pub(crate) exact: Vec<bool>,
    /// The examples `x_0`.
    pub(crate) x0: Vec<f32>,
    /// The network's anchor input.
    pub(crate) input: Vec<f32>,
    /// The path's noise.
    pub(crate) noise: Vec<f32>,
    /// The loss weights λ(t) (`None`: uniform).
    pub(crate) lambda: Option<Vec<f64>>,
    /// The class label of each row after label dropout (`None`: the "no class" token);
    /// empty for unlabelled data.
    pub(crate) classes: Vec<Option<usize>>,
}

impl Rows {
    /// Rows in the batch.
    pub(crate) fn len(&self) -> usize {
        self.t.len()
    }

    /// The rows `range` of this batch (a worker's shard).
    #[cfg_attr(not(feature = "data-parallel"), allow(dead_code))]
    pub(crate) fn slice(&self, range: Range<usize>) -> Rows {
        let values = |v: &[f32]| v[range.start * self.dim..range.end * self.dim].to_vec();
        let part = |v: &[f64]| match v.is_empty() {
            true => Vec::new(),
            false => v[range.clone()].to_vec(),
        };
        Rows {
            dim: self.dim,
            t: self.t[range.clone()].to_vec(),
            r: part(&self.r),
            exact: match self.exact.is_empty() {
                true => Vec::new(),
                false => self.exact[range.clone()].to_vec(),
            },
            x0: values(&self.x0),
            input: values(&self.input),
            noise: values(&self.noise),
            lambda: self.lambda.as_deref().map(part),
            classes: match self.classes.is_empty() {
                true => Vec::new(),
                false => self.classes[range].to_vec(),
            },
        }
    }
}

/// Which rows of an estimate are images of the data end (what the image terms judge).
pub(super) enum DataEnd {
    /// Every row (the consistency function).
    All,
    /// These rows (regression's rows at `t_max`, the flow map's jumps to `t_min`).
    Rows(Vec<usize>),
}

/// The estimate of some rows and what it is pulled towards, on the model's device.
pub(super) struct Estimate<B: AutodiffBackend> {
    /// The model's estimate.
    pub(super) x_hat: Tensor<B, 2>,
    /// Its target (no gradient).
    pub(super) target: Tensor<B, 2>,
    /// The examples.
    pub(super) x0: Tensor<B, 2>,
    /// The network's anchor input.
    pub(super) anchor: Tensor<B, 2>,
    /// The rows that are images of the data end.
    pub(super) data_end: DataEnd,
}

impl<B: AutodiffBackend> Estimate<B> {
    /// The loss of these rows (their mean), with data-term weight `w`.
    pub(super) fn loss(&self, config: &TrainConfig, w: f64, rows: &Rows) -> Tensor<B, 1> {
        loss::integration_flow_loss(
            config.distance,
            w,
            rows.lambda.clone(),
            self.x_hat.clone(),
            self.target.clone(),
            self.anchor.clone(),
        )
    }
}

/// Each objective's estimate of `rows` and the target it is pulled towards: regression trains
/// the denoiser (for a flow-map network, its r = t estimate), the flow map the jumps to
/// target times r ≤ t, the consistency objective the estimate one-step samplers call.
pub(super) fn estimate<B, N>(
    model: &IntegrationFlow<B, N>,
    ema: &N::InnerModule,
    config: &TrainConfig,
    step: usize,
    rows: &Rows,
    device: &B::Device,
) -> Result<Estimate<B>>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    let (n, dim) = (rows.len(), rows.dim);
    // A labelled batch asks the model (and, through it, its EMA teacher) for the rows' classes.
    let conditioned;
    let model = match rows.classes.is_empty() {
        true => model,
        false => {
            conditioned = model
                .clone()
                .with_classes(Classes::Each(rows.classes.clone()))?;
            &conditioned
        }
    };
    let flow = model.flow().clone();
    let upload = |values: &[f32]| {
        Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), [n, dim]), device)
    };
    let x0 = upload(&rows.x0);
    let anchor = upload(&rows.input);
    let noise = upload(&rows.noise);
    let t = &rows.t;
    let x_t = flow.interpolate(x0.clone(), noise.clone(), t)?;
    let (x_hat, target, data_end) = match &config.objective {
        ObjectiveConfig::Regression => {
            let x_hat = model.denoise(x_t, t, anchor.clone())?;
            // Its one-step samples: the rows at t_max (elsewhere the estimate is a
            // conditional mean, not an image to judge).
            let max = flow.time_range().max;
            let judged = (0..n).filter(|&i| t[i] >= max).collect();
            let target = objective::regression::target(x0.clone());
            (x_hat, target, DataEnd::Rows(judged))
        }
        ObjectiveConfig::FlowMap(flow_map) => {
            let r = &rows.r;
            let x_hat = model.estimate_to(x_t.clone(), t, r, anchor.clone())?;
            let target = objective::flow_map::target(
                flow_map,
                model,
                ema,
                (&x0, &noise, &x_t),
                &anchor,
                (t, r, &rows.exact),
                &x_hat,
            )?;
            let min = flow.time_range().min;
            let judged = (0..n).filter(|&i| r[i] <= min && t[i] > min).collect();
            (x_hat, target, DataEnd::Rows(judged))
        }
        ObjectiveConfig::Consistency(consistency) => {
            let x_hat = model.estimate(x_t, t, anchor.clone())?;
            let target = objective::consistency::target(
                consistency,
                model,
                ema,
                step,
                &x0,
                &noise,
                &anchor,
                t,
            )?;
            (x_hat, target, DataEnd::All)
        }
    };
    Ok(Estimate {
        x_hat,
        target,
        x0,
        anchor,
        data_end,
    })
}

/// A non-finite network input (NaN noise or data) as a divergence of `step`, like a NaN loss.
/// Only the model's own input checks: other non-finite values (a flow's coefficients) are
/// defects to report, not divergences to skip.
pub(super) fn input_divergence(step: usize, e: Error) -> Error {
    match e {
        Error::NonFinite { context, value }
            if context == crate::model::NON_FINITE_X_T
                || context == crate::model::NON_FINITE_ANCHOR =>
        {
            Error::Diverged {
                step,
                reason: format!("{context} is {value}"),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_keeps_its_rows_values() {
        let rows = Rows {
            dim: 2,
            t: vec![0.1, 0.2, 0.3],
            r: vec![0.0, 0.1, 0.2],
            exact: vec![true, false, false],
            x0: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            input: vec![0.0; 6],
            noise: vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],
            lambda: Some(vec![7.0, 8.0, 9.0]),
            classes: vec![Some(1), None, Some(0)],
        };
        let part = rows.slice(1..3);
        assert_eq!(part.len(), 2);
        assert_eq!(part.t, vec![0.2, 0.3]);
        assert_eq!(part.r, vec![0.1, 0.2]);
        assert_eq!(part.exact, vec![false, false]);
        assert_eq!(part.x0, vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(part.noise, vec![-3.0, -4.0, -5.0, -6.0]);
        assert_eq!(part.lambda, Some(vec![8.0, 9.0]));
        assert_eq!(part.classes, vec![None, Some(0)]);
        let plain = Rows {
            r: Vec::new(),
            exact: Vec::new(),
            lambda: None,
            classes: Vec::new(),
            ..rows
        };
        let empty = plain.slice(3..3);
        assert_eq!((empty.len(), empty.r.len(), empty.x0.len()), (0, 0, 0));
    }
}
