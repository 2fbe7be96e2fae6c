//! How often generated samples are of the class they were asked for: overall and per class,
//! from any labeller (the crate's image classifier, or the nearest labelled examples for
//! low-dimensional data).

use crate::data::Dataset;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The share of samples whose predicted class is the requested one, overall and per
/// requested class (`None` for a class nobody asked for).
///
/// ```
/// use integration_flow::metrics::ClassAgreement;
/// let agreement = ClassAgreement::new(&[0, 0, 1, 1], &[0, 1, 1, 1], 3)?;
/// assert_eq!(agreement.overall, 0.75);
/// assert_eq!(agreement.per_class, vec![Some(0.5), Some(1.0), None]);
/// assert_eq!(agreement.worst(), Some(0.5));
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassAgreement {
    /// Agreeing samples over all samples.
    pub overall: f64,
    /// Per requested class, its agreeing samples over its samples.
    pub per_class: Vec<Option<f64>>,
}

impl ClassAgreement {
    /// The agreement of `predicted` with `requested` (one per sample) over `classes` classes;
    /// different counts, no samples or a label `≥ classes` are errors.
    pub fn new(requested: &[usize], predicted: &[usize], classes: usize) -> Result<Self> {
        if requested.len() != predicted.len() {
            return Err(Error::ShapeMismatch {
                context: "requested and predicted classes",
                expected: format!("{} predictions", requested.len()),
                found: format!("{}", predicted.len()),
            });
        }
        if requested.is_empty() {
            return Err(Error::InvalidArgument {
                name: "requested",
                reason: "agreement needs at least one sample".into(),
            });
        }
        if let Some(&l) = requested.iter().chain(predicted).find(|&&l| l >= classes) {
            return Err(Error::InvalidArgument {
                name: "classes",
                reason: format!("label {l} is not one of the {classes} classes"),
            });
        }
        let (mut hits, mut counts) = (vec![0usize; classes], vec![0usize; classes]);
        for (&r, &p) in requested.iter().zip(predicted) {
            counts[r] += 1;
            hits[r] += usize::from(r == p);
        }
        Ok(ClassAgreement {
            overall: hits.iter().sum::<usize>() as f64 / requested.len() as f64,
            per_class: hits
                .iter()
                .zip(&counts)
                .map(|(&h, &c)| (c > 0).then(|| h as f64 / c as f64))
                .collect(),
        })
    }

    /// The lowest per-class agreement.
    pub fn worst(&self) -> Option<f64> {
        self.per_class.iter().flatten().copied().reduce(f64::min)
    }
}

/// The class of each sample (row-major, `reference.dim()` values per sample) by a majority
/// of its `k` nearest examples in the labelled `reference` (ties to the smaller label): a
/// labeller for low-dimensional data such as the toy sets.
///
/// ```
/// use integration_flow::data::Dataset;
/// use integration_flow::metrics::nearest_labels;
/// let reference = Dataset::new(vec![-1.0, -1.1, 1.0, 1.2], 1)?.with_labels(vec![0, 0, 1, 1], 2)?;
/// assert_eq!(nearest_labels(&reference, &[-0.9, 3.0], 3)?, vec![0, 1]);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn nearest_labels(reference: &Dataset, samples: &[f32], k: usize) -> Result<Vec<usize>> {
    let labels = reference.labels().ok_or(Error::InvalidArgument {
        name: "reference",
        reason: "the reference data has no labels".into(),
    })?;
    let dim = reference.dim();
    if !samples.len().is_multiple_of(dim) {
        return Err(Error::ShapeMismatch {
            context: "samples",
            expected: format!("a multiple of {dim} values"),
            found: format!("{} values", samples.len()),
        });
    }
    if k == 0 {
        return Err(Error::InvalidArgument {
            name: "k",
            reason: "the vote needs at least one neighbour".into(),
        });
    }
    let k = k.min(reference.len());
    let classes = reference.classes();
    Ok(samples
        .chunks(dim)
        .map(|x| {
            let mut distances: Vec<(f32, usize)> = (0..reference.len())
                .map(|i| {
                    let d = reference
                        .row(i)
                        .iter()
                        .zip(x)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>();
                    (d, labels[i])
                })
                .collect();
            distances.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            let mut votes = vec![0usize; classes];
            for &(_, label) in &distances[..k] {
                votes[label] += 1;
            }
            // The first label with the most votes.
            let best = votes.iter().copied().max().unwrap_or(0);
            votes.iter().position(|&v| v == best).unwrap_or(0)
        })
        .collect())
}
