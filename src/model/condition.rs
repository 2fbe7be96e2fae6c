//! What a class-conditional model is asked for: the classes of its estimates and the scale of
//! classifier-free guidance, set on the model before sampling (samplers stay stateless: they
//! call a model that carries its request).

use super::IntegrationFlow;
use crate::error::{Error, Result};
use crate::nn::{ClassInput, IntegrationNet};
use burn::tensor::{backend::Backend, Tensor};

/// The classes a model's estimates are asked for.
///
/// ```
/// use integration_flow::model::Classes;
/// let sevens = Classes::All(7);
/// let mixed = Classes::each([3, 1, 4]);
/// assert_eq!(mixed.rows(3), Some(vec![Some(3), Some(1), Some(4)]));
/// assert_eq!(sevens.rows(2), Some(vec![Some(7), Some(7)]));
/// assert_eq!(mixed.rows(2), None); // three labels for two rows
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Classes {
    /// No class: an unconditional model's only request; for a class-conditional one, its
    /// "no class" token (a network without it cannot be asked this).
    #[default]
    Unconditional,
    /// One class for every row.
    All(usize),
    /// One label per row (`None`: that row's "no class" token).
    Each(Vec<Option<usize>>),
}

impl Classes {
    /// One class per row.
    pub fn each(labels: impl IntoIterator<Item = usize>) -> Self {
        Classes::Each(labels.into_iter().map(Some).collect())
    }

    /// The label of each of `n` rows (`None`: no class); `None` where a per-row request has
    /// another count.
    pub fn rows(&self, n: usize) -> Option<Vec<Option<usize>>> {
        match self {
            Classes::Unconditional => Some(vec![None; n]),
            Classes::All(class) => Some(vec![Some(*class); n]),
            Classes::Each(labels) => (labels.len() == n).then(|| labels.clone()),
        }
    }

    /// Rows a per-row request is for (`None`: one request for any number of rows).
    pub fn count(&self) -> Option<usize> {
        match self {
            Classes::Unconditional | Classes::All(_) => None,
            Classes::Each(labels) => Some(labels.len()),
        }
    }

    /// The classes asked for (`None`s left out).
    fn labels(&self) -> Vec<usize> {
        match self {
            Classes::Unconditional => Vec::new(),
            Classes::All(class) => vec![*class],
            Classes::Each(labels) => labels.iter().flatten().copied().collect(),
        }
    }

    /// Whether some row asks for the "no class" token.
    fn asks_for_no_class(&self) -> bool {
        match self {
            Classes::Unconditional => true,
            Classes::All(_) => false,
            Classes::Each(labels) => labels.iter().any(Option::is_none),
        }
    }
}

/// A model's request: its classes and guidance scale (1: none).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Condition {
    pub(crate) classes: Classes,
    pub(crate) guidance: f64,
}

impl Default for Condition {
    fn default() -> Self {
        Condition {
            classes: Classes::Unconditional,
            guidance: 1.0,
        }
    }
}

/// Why a network cannot give the "no class" estimate.
fn no_null_class(input: ClassInput) -> Error {
    Error::InvalidArgument {
        name: "classes",
        reason: format!(
            "the network is conditioned on {} classes and has no \"no class\" token (it was not \
             trained with label dropout), so it cannot give unconditional estimates: ask for \
             classes (Classes::All, Classes::each)",
            input.classes
        ),
    }
}

impl<B: Backend, N: IntegrationNet<B>> IntegrationFlow<B, N> {
    /// The same model asked for `classes`: every estimate (and so every sampler, one-step or
    /// ODE) is then of those classes. A label outside the network's classes, classes for a
    /// network without a class input, or "no class" for one without the "no class" token is
    /// [`Error::InvalidArgument`]; a per-row request must match the rows of each call.
    ///
    /// ```
    /// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
    /// use integration_flow::prelude::*;
    /// use integration_flow::model::Classes;
    /// use integration_flow::nn::ClassInput;
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let config = MlpConfig { width: 32, classes: Some(ClassInput::new(3)), ..Default::default() };
    /// let model = IntegrationFlowConfig::default()
    ///     .init(FlowConfig::Rf(Default::default()).init()?, config.init::<Cpu>(&Default::default(), 0)?)?;
    /// let twos = model.clone().with_classes(Classes::All(2))?.generate(&mut StdRng::seed_from_u64(0), 8, 1)?;
    /// assert_eq!(twos.dims(), [8, 2]);
    /// assert!(model.with_classes(Classes::All(3)).is_err()); // classes 0, 1, 2 only
    /// # }
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn with_classes(mut self, classes: Classes) -> Result<Self> {
        check_classes(self.net.class_input(), &classes)?;
        self.condition.classes = classes;
        Ok(self)
    }

    /// The same model with classifier-free guidance of scale `w`: each estimate is
    /// `x̂_∅ + w·(x̂_c − x̂_∅)` from the class-conditional `x̂_c` and the "no class" `x̂_∅`, two
    /// network evaluations per call (in one batch). `w = 1` is no guidance (one evaluation),
    /// `w = 0` the unconditional estimate. Needs a network with the "no class" token; `w`
    /// must be finite and non-negative.
    pub fn with_guidance(mut self, w: f64) -> Result<Self> {
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::InvalidArgument {
                name: "guidance",
                reason: format!("the guidance scale must be finite and non-negative, got {w}"),
            });
        }
        match self.net.class_input() {
            None if w != 1.0 => {
                return Err(Error::InvalidArgument {
                    name: "guidance",
                    reason: "guidance needs a class-conditional network".into(),
                })
            }
            Some(input) if !input.null_class && w != 1.0 => return Err(no_null_class(input)),
            _ => {}
        }
        self.condition.guidance = w;
        Ok(self)
    }

    /// The same model asked for the rows `rows` of its per-row request (unchanged for a
    /// request of one class for all): for a call on some of the rows it was asked for.
    pub(crate) fn for_rows(&self, rows: &[usize]) -> Result<Self> {
        match &self.condition.classes {
            Classes::Unconditional | Classes::All(_) => Ok(self.clone()),
            Classes::Each(labels) => {
                let picked = rows
                    .iter()
                    .map(|&i| {
                        labels.get(i).copied().ok_or_else(|| Error::ShapeMismatch {
                            context: "class labels per row",
                            expected: format!("a label for row {i}"),
                            found: format!("{} labels", labels.len()),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.clone().with_classes(Classes::Each(picked))
            }
        }
    }

    /// The classes the model's estimates are asked for.
    pub fn classes(&self) -> &Classes {
        &self.condition.classes
    }

    /// The classifier-free guidance scale (1: none).
    pub fn guidance(&self) -> f64 {
        self.condition.guidance
    }

    /// Network evaluations per model call: 2 under guidance, else 1 (what NFE counts).
    pub fn evaluations_per_call(&self) -> usize {
        match self.guided() {
            true => 2,
            false => 1,
        }
    }

    fn guided(&self) -> bool {
        self.net.class_input().is_some() && self.condition.guidance != 1.0
    }

    /// The network's output `F` for `n` rows under the model's request (the plain call for an
    /// unconditional network).
    pub(super) fn net_output(
        &self,
        input: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Option<Tensor<B, 1>>,
        anchor: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        let n = input.dims()[0];
        let Some(class_input) = self.net.class_input() else {
            if self.condition.classes != Classes::Unconditional {
                return Err(Error::InvalidArgument {
                    name: "classes",
                    reason: "the network takes no class input".into(),
                });
            }
            return Ok(match gap {
                None => self.net.forward(input, c_noise, anchor),
                Some(gap) => self.net.forward_to(input, c_noise, gap, anchor),
            });
        };
        // The request was checked against this network's classes when it was set; a network
        // swapped in since (`with_net`) is checked again here.
        check_classes(Some(class_input), &self.condition.classes)?;
        if self.guided() && !class_input.null_class {
            return Err(no_null_class(class_input));
        }
        let rows = self
            .condition
            .classes
            .rows(n)
            .ok_or_else(|| Error::ShapeMismatch {
                context: "class labels per row",
                expected: format!("{n} labels (one per row) or one class for all"),
                found: format!(
                    "{} labels",
                    self.condition.classes.count().unwrap_or_default()
                ),
            })?;
        let device = input.device();
        let classes = crate::nn::one_hot::<B>(&rows, class_input, &device);
        if !self.guided() {
            return Ok(self
                .net
                .forward_classes(input, c_noise, gap, classes, anchor));
        }
        // The conditional and the "no class" rows in one batch.
        let nulls = crate::nn::one_hot::<B>(&vec![None; n], class_input, &device);
        let twice = |t: Tensor<B, 2>| Tensor::cat(vec![t.clone(), t], 0);
        let gap = gap.map(|g| Tensor::cat(vec![g.clone(), g], 0));
        let both = self.net.forward_classes(
            twice(input),
            Tensor::cat(vec![c_noise.clone(), c_noise], 0),
            gap,
            Tensor::cat(vec![classes, nulls], 0),
            twice(anchor),
        );
        let conditional = both.clone().narrow(0, 0, n);
        let unconditional = both.narrow(0, n, n);
        let w = self.condition.guidance;
        Ok(unconditional.clone() + (conditional - unconditional).mul_scalar(w))
    }
}

/// `Ok` where a network with class input `input` can answer `classes`.
fn check_classes(input: Option<ClassInput>, classes: &Classes) -> Result<()> {
    let Some(input) = input else {
        return match classes {
            Classes::Unconditional => Ok(()),
            _ => Err(Error::InvalidArgument {
                name: "classes",
                reason: "the network takes no class input: it is unconditional".into(),
            }),
        };
    };
    if let Some(&label) = classes.labels().iter().find(|&&l| l >= input.classes) {
        return Err(Error::InvalidArgument {
            name: "classes",
            reason: format!(
                "class {label} is not one of the network's {} classes 0..{}",
                input.classes,
                input.classes - 1
            ),
        });
    }
    if classes.asks_for_no_class() && !input.null_class {
        return Err(no_null_class(input));
    }
    Ok(())
}
