//! Deterministic multi-step sampling with a flow-map network (one with a target-time input,
//! trained by the [`flow_map`](crate::train::objective::flow_map) objective): the ODE's path is
//! followed by jumps, with no fresh noise.

use super::Generated;
use crate::error::{Error, Result};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::tensor::backend::Backend;
use rand::Rng;

/// `x_T` from the prior, a jump to each of `times` in turn (decreasing, inside the range,
/// below `t_max`), and a last jump to the data end whose data-space estimate is the sample.
/// NFE = 1 + `times.len()`; with no `times` this is one-step generation. A network without a
/// target-time input is an error.
pub fn flow_map_jumps<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
    times: &[f64],
) -> Result<Generated<B>> {
    let range = model.flow().time_range();
    if !model.net().takes_target_time() {
        return Err(Error::InvalidArgument {
            name: "model",
            reason: "flow-map jumps need a network with a target-time input".into(),
        });
    }
    let mut last = range.max;
    for &t in times {
        if !(t < last && t > range.min) {
            return Err(Error::InvalidArgument {
                name: "times",
                reason: format!(
                    "jump times must decrease inside the range and below t_max; {t} does not"
                ),
            });
        }
        last = t;
    }
    let mut x = model.sample_prior(rng, n)?;
    let anchor = model.sample_anchor(rng, n)?;
    let mut t = range.max;
    for &r in times {
        x = model.flow_map_step(x, t, r, anchor.clone())?;
        t = r;
    }
    Ok(Generated {
        samples: model.estimate_to(x, &[t], &[range.min], anchor)?,
        nfe: (1 + times.len()) * model.evaluations_per_call(),
    })
}
