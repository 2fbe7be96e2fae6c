//! A family the crate does not ship, written outside it and checked with its self-check:
//! the trigonometric interpolant x_t = cos(πt/2)·x_0 + sin(πt/2)·n on t ∈ [0, 1].
//!
//! Run: `cargo run --release --example custom_flow`
use integration_flow::backend::Cpu;
use integration_flow::flow::{check, CheckConfig, ProbabilityFlow};
use std::f64::consts::FRAC_PI_2;

/// α = cos(πt/2), σ = sin(πt/2): variance preserving, prior N(0, I) at t = 1.
#[derive(Debug)]
struct Trigonometric;

impl ProbabilityFlow for Trigonometric {
    fn name(&self) -> &str {
        "trigonometric"
    }
    fn alpha(&self, t: f64) -> f64 {
        (FRAC_PI_2 * t).cos()
    }
    fn sigma(&self, t: f64) -> f64 {
        (FRAC_PI_2 * t).sin()
    }
    fn alpha_dot(&self, t: f64) -> f64 {
        -FRAC_PI_2 * (FRAC_PI_2 * t).sin()
    }
    fn sigma_dot(&self, t: f64) -> f64 {
        FRAC_PI_2 * (FRAC_PI_2 * t).cos()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Reuse freed tensor memory instead of faulting it back in every step (docs/benchmarks.md).
    integration_flow::backend::tune_allocator();
    let report = check::<Cpu, _>(&Trigonometric, &Default::default(), &CheckConfig::default())?;
    println!("{report}");
    if !report.passed() {
        return Err("the trigonometric flow failed its self-check".into());
    }
    Ok(())
}
