//! Exact linear assignment (the optimal-transport matching of policy `ot`): the shortest
//! augmenting path method of Jonker–Volgenant in Crouse's form (the algorithm behind SciPy's
//! `linear_sum_assignment`). Written here because the `lapjv` crate took 90 s for one
//! 4096 × 4096 chunk on the project's machine; this solves it in a few seconds.

use crate::error::{Error, Result};

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
    if let Some(bad) = cost.iter().find(|c| !c.is_finite()) {
        return Err(Error::InvalidArgument {
            name: "cost",
            reason: format!("assignment costs must be finite, found {bad}"),
        });
    }
    const NONE: usize = usize::MAX;
    let mut u = vec![0.0f64; n]; // row potentials
    let mut v = vec![0.0f64; n]; // column potentials
    let mut shortest = vec![f64::INFINITY; n];
    let mut path = vec![NONE; n];
    let mut col4row = vec![NONE; n];
    let mut row4col = vec![NONE; n];
    let mut row_seen = vec![false; n];
    let mut col_seen = vec![false; n];
    for cur_row in 0..n {
        // Dijkstra over columns with reduced costs, from `cur_row` to a free column. Columns
        // are scanned in index order (skipping finished ones) so memory is read sequentially.
        let mut min_val = 0.0f64;
        let mut i = cur_row;
        row_seen.iter_mut().for_each(|s| *s = false);
        col_seen.iter_mut().for_each(|s| *s = false);
        shortest.iter_mut().for_each(|s| *s = f64::INFINITY);
        let sink = loop {
            let mut index = NONE;
            let mut lowest = f64::INFINITY;
            row_seen[i] = true;
            let row = &cost[i * n..(i + 1) * n];
            let base = min_val - u[i];
            for j in 0..n {
                if col_seen[j] {
                    continue;
                }
                let r = base + row[j] - v[j];
                if r < shortest[j] {
                    path[j] = i;
                    shortest[j] = r;
                }
                let s = shortest[j];
                if s < lowest || (s == lowest && row4col[j] == NONE) {
                    lowest = s;
                    index = j;
                }
            }
            if index == NONE {
                // Only reachable with non-finite reduced costs, which finite input rules out.
                return Err(Error::InvalidArgument {
                    name: "cost",
                    reason: "no augmenting path (numerically degenerate costs)".into(),
                });
            }
            min_val = lowest;
            let j = index;
            col_seen[j] = true;
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };
        // Update the potentials.
        u[cur_row] += min_val;
        for r in 0..n {
            if row_seen[r] && r != cur_row {
                u[r] += min_val - shortest[col4row[r]];
            }
        }
        for c in 0..n {
            if col_seen[c] {
                v[c] -= min_val - shortest[c];
            }
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
    Ok(col4row)
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

    #[test]
    fn rejects_bad_input() {
        assert!(solve(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(solve(&[1.0, f64::NAN, 3.0, 4.0], 2).is_err());
        assert_eq!(solve(&[], 0).unwrap(), Vec::<usize>::new());
    }
}
