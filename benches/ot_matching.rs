//! Time of the optimal-transport matching behind anchor policy `ot`: checkerboard points
//! matched to standard-normal draws, per chunk size, by the exact shortest-augmenting-path
//! solver on the stored cost matrix (`assignment::solve`) and by the auction on the points
//! (`assignment::solve_squared_distances`, what the anchor store uses).
//!
//! `cargo bench --bench ot_matching [-- SIZES...]` (default 1024 2048 4096; the exact solver
//! is skipped above 4096, where it takes minutes). Prints one line per size with both times
//! and the relative gap between their total costs.

use integration_flow::data::Toy;
use integration_flow::train::assignment::{solve, solve_squared_distances};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1024, 2048, 4096]
    } else {
        sizes
    };
    for n in sizes {
        let data = Toy::Checkerboard.sample(n, 0)?;
        let points: Vec<f64> = (0..n)
            .flat_map(|i| {
                data.row(i)
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<f64> = (0..2 * n)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let cost = |i: usize, j: usize| -> f64 {
            (points[2 * i] - draws[2 * j]).powi(2) + (points[2 * i + 1] - draws[2 * j + 1]).powi(2)
        };
        let total = |a: &[usize]| -> f64 { a.iter().enumerate().map(|(i, &j)| cost(i, j)).sum() };
        let start = Instant::now();
        let auction = solve_squared_distances(&points, &draws, 2)?;
        let auction_s = start.elapsed().as_secs_f64();
        if n > 4096 {
            println!(
                "n {n:>5}: auction {auction_s:>7.2} s, total cost {:.6}",
                total(&auction)
            );
            continue;
        }
        let matrix: Vec<f64> = (0..n * n).map(|k| cost(k / n, k % n)).collect();
        let start = Instant::now();
        let exact = solve(&matrix, n)?;
        let exact_s = start.elapsed().as_secs_f64();
        let (a, e) = (total(&auction), total(&exact));
        println!(
            "n {n:>5}: exact {exact_s:>7.2} s, auction {auction_s:>7.2} s ({:.1}× faster), \
             total cost {e:.6} vs {a:.6} (relative gap {:.1e})",
            exact_s / auction_s,
            (a - e) / e
        );
    }
    Ok(())
}
