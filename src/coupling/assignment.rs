//! Linear assignment, the optimal-transport matching of policy `ot`.
//!
//! [`solve`] is exact, for any cost matrix: the shortest augmenting path method of
//! Jonker–Volgenant in Crouse's form (the algorithm behind SciPy's `linear_sum_assignment`).
//! [`solve_squared_distances`] matches two point sets by Bertsekas' auction with ε-scaling,
//! optimal to a relative [`AUCTION_TOLERANCE`]: on such geometric costs the late augmenting
//! searches reach almost every row, and the auction is 16× faster at 4096 points
//! (`cargo bench --bench ot_matching`). Both were written here because the `lapjv` crate
//! took 90 s for one 4096 × 4096 chunk on the project's machine.

use crate::error::{Error, Result};

/// Up to this many dimensions squared distances are recomputed when needed rather than
/// stored (n² values: 512 MiB at 8192 points).
const ON_THE_FLY_MAX_DIM: usize = 8;

/// The assignment `row → column` of least total cost for a square `n × n` cost matrix
/// (row-major). Costs must be finite.
pub fn solve(cost: &[f64], n: usize) -> Result<Vec<usize>> {
    if cost.len() != n * n {
        return Err(Error::ShapeMismatch {
            context: "assignment cost matrix",
            expected: format!("{n} × {n} = {} values", n * n),
            found: format!("{} values", cost.len()),
        });
    }
    check_finite(cost, "cost", "assignment costs")?;
    Ok(shortest_augmenting_paths(n, |i, j| cost[i * n + j]))
}

/// The assignment `row → column` minimising the total squared Euclidean distance between
/// `rows` and `columns`, two sets of `n` points of `dim` coordinates each (row-major). Equal
/// to [`solve`] on the matrix of squared distances up to [`AUCTION_TOLERANCE`] × the largest
/// squared distance in total cost, and much faster on such geometric costs: it runs
/// Bertsekas' auction (8192 points in 2-D: about 10 s against 218 s for [`solve`],
/// `benches/ot_matching.rs`), computing distances as needed when `dim` is small.
pub fn solve_squared_distances(rows: &[f64], columns: &[f64], dim: usize) -> Result<Vec<usize>> {
    if dim == 0 {
        return Err(Error::InvalidArgument {
            name: "dim",
            reason: "points need at least one coordinate".into(),
        });
    }
    if rows.len() != columns.len() || !rows.len().is_multiple_of(dim) {
        return Err(Error::ShapeMismatch {
            context: "assignment points",
            expected: format!("two equal sets of points with {dim} coordinates each"),
            found: format!("{} and {} values", rows.len(), columns.len()),
        });
    }
    check_finite(rows, "rows", "point coordinates")?;
    check_finite(columns, "columns", "point coordinates")?;
    let n = rows.len() / dim;
    let squared_distance =
        |x: &[f64], y: &[f64]| -> f64 { x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum() };
    // Finite coordinates can still overflow when squared and summed.
    let largest = rows
        .iter()
        .chain(columns)
        .fold(0.0f64, |m, c| m.max(c.abs()));
    if !((2.0 * largest).powi(2) * dim as f64).is_finite() {
        return Err(Error::InvalidArgument {
            name: "rows",
            reason: format!("coordinates up to {largest:e} overflow squared distances"),
        });
    }
    if dim > ON_THE_FLY_MAX_DIM {
        let mut cost = Vec::with_capacity(n * n);
        for x in rows.chunks(dim) {
            cost.extend(columns.chunks(dim).map(|y| squared_distance(x, y)));
        }
        return Ok(auction(n, |i, j| cost[i * n + j]));
    }
    Ok(auction(n, |i, j| {
        squared_distance(
            &rows[i * dim..(i + 1) * dim],
            &columns[j * dim..(j + 1) * dim],
        )
    }))
}

/// Relative accuracy of the auction behind [`solve_squared_distances`]: its assignment costs at most this fraction of the largest
/// cost more than the optimum. (Much smaller and the last phases' price steps would fall
/// below the resolution of f64 prices.)
pub const AUCTION_TOLERANCE: f64 = 1e-9;

/// Bertsekas' auction with ε-scaling (Gauss–Seidel, forward): rows bid for their cheapest
/// column `c(i, j) + price(j)`, raising its price by the margin over their second choice plus
/// ε; each phase divides ε by `SCALING` and re-runs the bidding from the last prices. The
/// result is optimal to within `n · ε_final` in total cost. On geometric costs (points matched
/// to points) it is far faster than shortest augmenting paths, whose late searches reach
/// almost every row (`benches/ot_matching.rs`).
fn auction(n: usize, cost: impl Fn(usize, usize) -> f64) -> Vec<usize> {
    const NONE: usize = usize::MAX;
    const SCALING: f64 = 8.0;
    if n <= 1 {
        return (0..n).collect();
    }
    let largest = (0..n)
        .flat_map(|i| [cost(i, 0), cost(i, n - 1)])
        .fold(0.0f64, |m, c| m.max(c.abs()))
        .max(f64::MIN_POSITIVE);
    let final_eps = (AUCTION_TOLERANCE * largest / n as f64).max(f64::MIN_POSITIVE);
    let mut eps = largest / 4.0;
    let mut price = vec![0.0f64; n];
    let mut owner = vec![NONE; n];
    let mut column_of = vec![NONE; n];
    let mut unassigned: Vec<usize> = Vec::with_capacity(n);
    loop {
        owner.iter_mut().for_each(|o| *o = NONE);
        column_of.iter_mut().for_each(|c| *c = NONE);
        unassigned.clear();
        unassigned.extend((0..n).rev());
        while let Some(i) = unassigned.pop() {
            let (mut best, mut second, mut best_j) = (f64::INFINITY, f64::INFINITY, 0);
            for (j, &p) in price.iter().enumerate() {
                let w = cost(i, j) + p;
                if w < second {
                    if w < best {
                        second = best;
                        best = w;
                        best_j = j;
                    } else {
                        second = w;
                    }
                }
            }
            // Raise the price by at least one step of f64 so that a tie cannot ping-pong.
            let raised = price[best_j] + (second - best) + eps;
            price[best_j] = if raised > price[best_j] {
                raised
            } else {
                price[best_j].next_up()
            };
            let previous = std::mem::replace(&mut owner[best_j], i);
            column_of[i] = best_j;
            if previous != NONE {
                column_of[previous] = NONE;
                unassigned.push(previous);
            }
        }
        if eps <= final_eps {
            return column_of;
        }
        eps = (eps / SCALING).max(final_eps);
    }
}

fn check_finite(values: &[f64], name: &'static str, what: &str) -> Result<()> {
    match values.iter().find(|c| !c.is_finite()) {
        Some(bad) => Err(Error::InvalidArgument {
            name,
            reason: format!("{what} must be finite, found {bad}"),
        }),
        None => Ok(()),
    }
}

/// The solver proper; `cost(i, j)` is entry `(i, j)` of the (finite) cost matrix.
fn shortest_augmenting_paths(n: usize, cost: impl Fn(usize, usize) -> f64) -> Vec<usize> {
    const NONE: usize = usize::MAX;
    let mut u = vec![0.0f64; n]; // row potentials
    let mut v = vec![0.0f64; n]; // column potentials
    let mut shortest = vec![f64::INFINITY; n];
    let mut path = vec![NONE; n];
    let mut col4row = vec![NONE; n];
    let mut row4col = vec![NONE; n];
    let mut seen_rows = Vec::with_capacity(n);
    // Columns not yet reached in this search: `open[..open_len]`. Late searches reach most
    // columns, so sweeping only the open ones (rather than all n, skipping reached ones) is
    // what keeps them cheap.
    let mut open: Vec<usize> = (0..n).collect();
    for cur_row in 0..n {
        // Dijkstra over columns with reduced costs, from `cur_row` to a free column.
        let mut min_val = 0.0f64;
        let mut i = cur_row;
        let mut open_len = n;
        seen_rows.clear();
        shortest.iter_mut().for_each(|s| *s = f64::INFINITY);
        let sink = loop {
            seen_rows.push(i);
            let base = min_val - u[i];
            let mut lowest = f64::INFINITY;
            let mut index = NONE;
            for (k, &j) in open[..open_len].iter().enumerate() {
                let r = base + cost(i, j) - v[j];
                if r < shortest[j] {
                    path[j] = i;
                    shortest[j] = r;
                }
                let s = shortest[j];
                // The lowest distance, a free column among equals (the search ends sooner).
                if s < lowest || (s == lowest && row4col[j] == NONE) {
                    lowest = s;
                    index = k;
                }
            }
            // Finite costs keep every open column's distance finite after the first sweep.
            debug_assert!(index != NONE, "no open column");
            min_val = lowest;
            let j = open[index];
            open_len -= 1;
            open.swap(index, open_len);
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };
        // Update the potentials: reached columns are `open[open_len..]`.
        u[cur_row] += min_val;
        for &r in &seen_rows[1..] {
            u[r] += min_val - shortest[col4row[r]];
        }
        for &c in &open[open_len..] {
            v[c] -= min_val - shortest[c];
        }
        // Augment along the path back to `cur_row`.
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            std::mem::swap(&mut col4row[r], &mut j);
            if r == cur_row {
                break;
            }
        }
    }
    col4row
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn total(cost: &[f64], n: usize, a: &[usize]) -> f64 {
        a.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum()
    }

    fn brute_force(cost: &[f64], n: usize) -> f64 {
        fn go(cost: &[f64], n: usize, row: usize, used: &mut Vec<bool>) -> f64 {
            if row == n {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..n {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[row * n + j] + go(cost, n, row + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        go(cost, n, 0, &mut vec![false; n])
    }

    #[test]
    fn matches_brute_force_on_small_matrices() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in 1..=7 {
            for trial in 0..30 {
                // Some trials with ties (small integer costs), some continuous.
                let cost: Vec<f64> = (0..n * n)
                    .map(|_| {
                        if trial % 2 == 0 {
                            f64::from(rng.random_range(0..4u8))
                        } else {
                            rng.random::<f64>() * 10.0 - 3.0
                        }
                    })
                    .collect();
                let a = solve(&cost, n).unwrap();
                let mut seen = a.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "not a permutation");
                let best = brute_force(&cost, n);
                assert!(
                    (total(&cost, n, &a) - best).abs() < 1e-9,
                    "n={n} trial={trial}"
                );
            }
        }
    }

    #[test]
    fn no_swap_improves_a_large_assignment() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 300;
        let cost: Vec<f64> = (0..n * n).map(|_| rng.random::<f64>()).collect();
        let a = solve(&cost, n).unwrap();
        for i in 0..n {
            for k in 0..n {
                let swapped = cost[i * n + a[k]] + cost[k * n + a[i]];
                assert!(swapped >= cost[i * n + a[i]] + cost[k * n + a[k]] - 1e-9);
            }
        }
    }

    fn points(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f64> {
        (0..n * dim)
            .map(|_| rng.random::<f64>() * 4.0 - 2.0)
            .collect()
    }

    fn distance_matrix(x: &[f64], y: &[f64], dim: usize) -> Vec<f64> {
        x.chunks(dim)
            .flat_map(|a| {
                y.chunks(dim)
                    .map(move |b| a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum::<f64>())
            })
            .collect()
    }

    #[test]
    fn auction_matches_brute_force_on_small_point_sets() {
        let mut rng = StdRng::seed_from_u64(11);
        for n in 1..=7 {
            for dim in [1, 2, 3] {
                for _ in 0..20 {
                    let (x, y) = (points(&mut rng, n, dim), points(&mut rng, n, dim));
                    let cost = distance_matrix(&x, &y, dim);
                    let a = solve_squared_distances(&x, &y, dim).unwrap();
                    let best = brute_force(&cost, n);
                    assert!((total(&cost, n, &a) - best).abs() < 1e-9, "n={n} dim={dim}");
                }
            }
        }
    }

    #[test]
    fn auction_agrees_with_the_exact_solver_in_low_and_high_dimensions() {
        let mut rng = StdRng::seed_from_u64(5);
        // dim 2 computes distances on the fly, dim 12 stores them.
        for (n, dim) in [(400, 2), (200, 12)] {
            let (x, y) = (points(&mut rng, n, dim), points(&mut rng, n, dim));
            let cost = distance_matrix(&x, &y, dim);
            let exact = total(&cost, n, &solve(&cost, n).unwrap());
            let auction = solve_squared_distances(&x, &y, dim).unwrap();
            let mut seen = auction.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "not a permutation");
            let largest = cost.iter().fold(0.0f64, |m, &c| m.max(c));
            let gap = total(&cost, n, &auction) - exact;
            assert!(
                gap >= -1e-9 && gap <= AUCTION_TOLERANCE * largest + 1e-12,
                "gap {gap}"
            );
        }
    }

    #[test]
    fn auction_terminates_on_duplicate_points() {
        // Identical rows tie exactly for every column; the bidding must still end.
        let n = 64;
        let x = vec![0.5; n * 2];
        let mut rng = StdRng::seed_from_u64(2);
        let y = points(&mut rng, n, 2);
        let mut a = solve_squared_distances(&x, &y, 2).unwrap();
        a.sort_unstable();
        assert_eq!(a, (0..n).collect::<Vec<_>>());
        let zeros = vec![0.0; n * 3];
        assert_eq!(solve_squared_distances(&zeros, &zeros, 3).unwrap().len(), n);
    }

    #[test]
    fn auction_rejects_bad_points() {
        assert!(solve_squared_distances(&[1.0, 2.0], &[1.0, 2.0], 0).is_err());
        assert!(solve_squared_distances(&[1.0, 2.0], &[1.0], 1).is_err());
        assert!(solve_squared_distances(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2).is_err());
        assert!(solve_squared_distances(&[f64::NAN, 2.0], &[1.0, 2.0], 2).is_err());
        assert!(solve_squared_distances(&[1e200, 2.0], &[1.0, 2.0], 2).is_err());
        assert!(solve_squared_distances(&[], &[], 2).unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(solve(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(solve(&[1.0, f64::NAN, 3.0, 4.0], 2).is_err());
        assert_eq!(solve(&[], 0).unwrap(), Vec::<usize>::new());
    }
}
