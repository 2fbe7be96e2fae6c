//! Probability-flow ODE solvers on the velocity built from the model's `x̂_0`:
//! `dx/dt = v(x, t) = flow.velocity(x, f(x, t, a), t)`, integrated from `t_max` down to the
//! data end. Where σ(t_min) = 0 (rectified flow) the velocity is singular there, so the
//! solvers stop at `t_min + 1e-3·(t_max − t_min)`, where σ is 1e-3.
//!
//! Fixed-step solvers use EDM's time grid where the noise-to-signal ratio σ̃ = σ/α is finite
//! at `t_max` (VP, VE, PFGM++): σ̃ steps `(σ̃_max^{1/ρ} + i/N·(σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ`
//! with ρ = 7, which are dense near the data where the ODE is stiff; and a uniform grid in t
//! where σ̃(t_max) is infinite (rectified flow, whose paths are straight lines).

use super::Generated;
use crate::error::{Error, Result};
use crate::flow::{ProbabilityFlow, ProbabilityFlowExt};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::tensor::{backend::Backend, ElementConversion, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A classical ODE solver.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OdeSolver {
    /// Explicit Euler, `steps` NFE.
    Euler {
        /// Steps on a uniform time grid.
        steps: usize,
    },
    /// EDM's Heun (second order, last step Euler), `2·steps − 1` NFE.
    Heun {
        /// Steps on a uniform time grid.
        steps: usize,
    },
    /// Classical fourth-order Runge–Kutta, `4·steps` NFE.
    Rk4 {
        /// Steps on a uniform time grid.
        steps: usize,
    },
    /// Adaptive Dormand–Prince 5(4) with the error norm over the whole batch.
    Dopri5 {
        /// Relative tolerance.
        rtol: f64,
        /// Absolute tolerance.
        atol: f64,
    },
}

impl OdeSolver {
    /// DOPRI5 with rtol = atol = 1e-5.
    pub const DOPRI5: OdeSolver = OdeSolver::Dopri5 {
        rtol: 1e-5,
        atol: 1e-5,
    };

    /// A short name for tables, e.g. `heun-8`.
    pub fn label(&self) -> String {
        match *self {
            OdeSolver::Euler { steps } => format!("euler-{steps}"),
            OdeSolver::Heun { steps } => format!("heun-{steps}"),
            OdeSolver::Rk4 { steps } => format!("rk4-{steps}"),
            OdeSolver::Dopri5 { rtol, atol } => format!("dopri5-{rtol:e}-{atol:e}"),
        }
    }
}

/// Where the solvers stop: `t_min`, or just above it where σ(t_min) = 0.
pub fn ode_end_time(flow: &dyn ProbabilityFlow) -> f64 {
    let r = flow.time_range();
    if flow.sigma(r.min) > 0.0 {
        r.min
    } else {
        r.min + 1e-3 * r.len()
    }
}

/// The `steps + 1` times of the fixed-step solvers, from `t_max` to [`ode_end_time`] (see the
/// module docs).
pub fn ode_time_grid(flow: &dyn ProbabilityFlow, steps: usize) -> Result<Vec<f64>> {
    if steps == 0 {
        return Err(Error::InvalidArgument {
            name: "steps",
            reason: "an ODE solver needs at least one step".into(),
        });
    }
    const RHO: f64 = 7.0;
    let (t0, t1) = (flow.time_range().max, ode_end_time(flow));
    let (r0, r1) = (flow.noise_to_signal(t0), flow.noise_to_signal(t1));
    let mut grid: Vec<f64> = if r0.is_finite() && r1 > 0.0 {
        let (a, b) = (r0.powf(1.0 / RHO), r1.powf(1.0 / RHO));
        (0..=steps)
            .map(|i| {
                flow.time_at_noise_to_signal((a + (b - a) * i as f64 / steps as f64).powf(RHO))
            })
            .collect()
    } else {
        (0..=steps)
            .map(|i| t0 + (t1 - t0) * i as f64 / steps as f64)
            .collect()
    };
    grid[0] = t0;
    grid[steps] = t1;
    Ok(grid)
}

/// Integrates the probability-flow ODE from prior samples with `solver`; the anchor is one draw
/// of the model's anchor law held fixed (zeros for a model trained without anchors).
pub fn solve_ode<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
    solver: OdeSolver,
) -> Result<Generated<B>> {
    let x = model.sample_prior(rng, n)?;
    let anchor = model.sample_anchor(rng, n)?;
    solve_ode_from(model, x, anchor, solver)
}

/// Integrates the probability-flow ODE from the given prior points `x` (`[n, dim]`, at
/// `t_max`) with `solver`, the network's anchor input `anchor` held fixed: the map from a
/// latent to its sample that [`solve_ode`] applies to fresh prior draws.
pub fn solve_ode_from<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    x: Tensor<B, 2>,
    anchor: Tensor<B, 2>,
    solver: OdeSolver,
) -> Result<Generated<B>> {
    integrate(model, x, anchor, solver, Direction::ToData)
}

/// Integrates the probability-flow ODE *backwards*, from data points `x` (`[n, dim]`, at the
/// data end) to `t_max`, with `solver` on the same time grid as [`solve_ode_from`] run in
/// reverse, the network's anchor input `anchor` held fixed: each point's *encoding*, the prior
/// point the ODE maps to it (up to the solver's error). For rectified flow and VE (α(T) = 0)
/// the prior point is the latent itself.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use integration_flow::prelude::*;
/// use integration_flow::sample::{encode_ode, solve_ode_from, OdeSolver};
/// let device = Default::default();
/// let net = MlpConfig::default().init::<Cpu>(&device, 0)?;
/// let flow = FlowConfig::Rf(Default::default()).init()?;
/// let model = IntegrationFlowConfig::default().init(flow, net)?;
/// let x = burn::tensor::Tensor::<Cpu, 2>::ones([4, 2], &device);
/// let zeros = burn::tensor::Tensor::<Cpu, 2>::zeros([4, 2], &device);
/// let latent = encode_ode(&model, x, zeros.clone(), OdeSolver::Heun { steps: 4 })?;
/// assert_eq!((latent.samples.dims(), latent.nfe), ([4, 2], 7));
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn encode_ode<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    x: Tensor<B, 2>,
    anchor: Tensor<B, 2>,
    solver: OdeSolver,
) -> Result<Generated<B>> {
    integrate(model, x, anchor, solver, Direction::ToPrior)
}

/// Which way an integration runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From `t_max` to the data end: generation.
    ToData,
    /// From the data end to `t_max`: encoding.
    ToPrior,
}

fn integrate<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    x: Tensor<B, 2>,
    anchor: Tensor<B, 2>,
    solver: OdeSolver,
    direction: Direction,
) -> Result<Generated<B>> {
    let flow = model.flow().clone();
    let (t0, t1) = match direction {
        Direction::ToData => (flow.time_range().max, ode_end_time(flow.as_ref())),
        Direction::ToPrior => (ode_end_time(flow.as_ref()), flow.time_range().max),
    };
    let mut nfe = 0usize;
    let range = flow.time_range();
    let evaluations = model.evaluations_per_call();
    let mut velocity = |x: &Tensor<B, 2>, t: f64| -> Result<Tensor<B, 2>> {
        nfe += evaluations;
        // Stage times like t + h/2 can fall a rounding error outside the range.
        let t = range.clamp(t);
        let x0 = model.denoise(x.clone(), &[t], anchor.clone())?;
        flow.velocity(x.clone(), x0, &[t])
    };
    let grid = |steps: usize| -> Result<Vec<f64>> {
        let mut ts = ode_time_grid(flow.as_ref(), steps)?;
        if direction == Direction::ToPrior {
            ts.reverse();
        }
        Ok(ts)
    };
    let samples = match solver {
        OdeSolver::Euler { steps } => {
            let ts = grid(steps)?;
            let mut x = x;
            for w in ts.windows(2) {
                let d = velocity(&x, w[0])?;
                x = x + d.mul_scalar(w[1] - w[0]);
            }
            x
        }
        OdeSolver::Heun { steps } => {
            let ts = grid(steps)?;
            let mut x = x;
            for (i, w) in ts.windows(2).enumerate() {
                let h = w[1] - w[0];
                let d = velocity(&x, w[0])?;
                let euler = x.clone() + d.clone().mul_scalar(h);
                x = if i + 1 < steps {
                    let d2 = velocity(&euler, w[1])?;
                    x + (d + d2).mul_scalar(0.5 * h)
                } else {
                    euler
                };
            }
            x
        }
        OdeSolver::Rk4 { steps } => {
            let ts = grid(steps)?;
            let mut x = x;
            for w in ts.windows(2) {
                let (t, h) = (w[0], w[1] - w[0]);
                let k1 = velocity(&x, t)?;
                let k2 = velocity(&(x.clone() + k1.clone().mul_scalar(h / 2.0)), t + h / 2.0)?;
                let k3 = velocity(&(x.clone() + k2.clone().mul_scalar(h / 2.0)), t + h / 2.0)?;
                let k4 = velocity(&(x.clone() + k3.clone().mul_scalar(h)), t + h)?;
                x = x + (k1 + k2.mul_scalar(2.0) + k3.mul_scalar(2.0) + k4).mul_scalar(h / 6.0);
            }
            x
        }
        OdeSolver::Dopri5 { rtol, atol } => {
            if !(rtol.is_finite() && rtol > 0.0 && atol.is_finite() && atol > 0.0) {
                return Err(Error::InvalidArgument {
                    name: "solver",
                    reason: format!("DOPRI5 tolerances must be finite and positive, got rtol {rtol}, atol {atol}"),
                });
            }
            dopri5(x, t0, t1, rtol, atol, &mut velocity)?
        }
    };
    Ok(Generated { samples, nfe })
}

/// Dormand–Prince 5(4) with FSAL, from `t0` to `t1` (either direction).
fn dopri5<B: Backend>(
    mut x: Tensor<B, 2>,
    t0: f64,
    t1: f64,
    rtol: f64,
    atol: f64,
    f: &mut impl FnMut(&Tensor<B, 2>, f64) -> Result<Tensor<B, 2>>,
) -> Result<Tensor<B, 2>> {
    const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
    const A: [&[f64]; 7] = [
        &[],
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ];
    // 5th-order weights are A[6]; the error weights are b5 − b4.
    const E: [f64; 7] = [
        35.0 / 384.0 - 5179.0 / 57600.0,
        0.0,
        500.0 / 1113.0 - 7571.0 / 16695.0,
        125.0 / 192.0 - 393.0 / 640.0,
        -2187.0 / 6784.0 + 92097.0 / 339200.0,
        11.0 / 84.0 - 187.0 / 2100.0,
        -1.0 / 40.0,
    ];
    let span = t1 - t0;
    let direction = span.signum();
    let mut t = t0;
    let mut h = 0.02 * span;
    let mut k1 = f(&x, t)?;
    let max_steps = 10_000;
    for _ in 0..max_steps {
        if (t1 - t) * direction <= 1e-12 * span.abs() {
            return Ok(x);
        }
        if (t + h - t1) * direction > 0.0 {
            h = t1 - t;
        }
        let mut k = vec![k1.clone()];
        for stage in 1..7 {
            let mut xi = x.clone();
            for (j, &a) in A[stage].iter().enumerate() {
                if a != 0.0 {
                    xi = xi + k[j].clone().mul_scalar(h * a);
                }
            }
            if stage == 6 {
                // xi is the 5th-order solution; its derivative is k7 (FSAL).
                let k7 = f(&xi, t + h)?;
                k.push(k7);
                let mut err = k[0].clone().mul_scalar(h * E[0]);
                for (j, &e) in E.iter().enumerate().skip(1) {
                    if e != 0.0 {
                        err = err + k[j].clone().mul_scalar(h * e);
                    }
                }
                let scale = x
                    .clone()
                    .abs()
                    .max_pair(xi.clone().abs())
                    .mul_scalar(rtol)
                    .add_scalar(atol);
                let ratio: f64 = (err / scale).powi_scalar(2).mean().into_scalar().elem();
                let norm = ratio.sqrt();
                if !norm.is_finite() {
                    return Err(Error::NonFinite {
                        context: "DOPRI5 error estimate",
                        value: norm,
                    });
                }
                let factor = if norm == 0.0 {
                    5.0
                } else {
                    (0.9 * norm.powf(-0.2)).clamp(0.2, 5.0)
                };
                if norm <= 1.0 {
                    t += h;
                    x = xi;
                    k1 = k.pop().unwrap_or(k1);
                }
                h *= factor;
                break;
            }
            let ki = f(&xi, t + C[stage] * h)?;
            k.push(ki);
        }
    }
    Err(Error::InvalidArgument {
        name: "solver",
        reason: format!("DOPRI5 did not reach t = {t1} in {max_steps} steps"),
    })
}
