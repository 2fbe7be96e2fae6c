//! A network's class input: labels `0..K−1` and a "no class" token, fed as a one-hot row that
//! the network maps next to its noise embedding (EDM's `map_label`, a linear map of the
//! one-hot labels added to the noise level's embedding).

use crate::error::{invalid_config, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The class input of a network: `classes` labels and, with `null_class`, a "no class" token
/// (column `classes` of the one-hot input), so that one network serves the conditional and the
/// unconditional task (classifier-free guidance needs both). Training with label dropout
/// ([`TrainConfig::label_dropout`](crate::train::TrainConfig::label_dropout)) teaches the
/// token; a network without it cannot be asked for unconditional estimates.
///
/// ```
/// use integration_flow::nn::ClassInput;
/// let digits = ClassInput::new(10);
/// assert_eq!((digits.classes, digits.null_class, digits.width()), (10, true, 11));
/// assert!(ClassInput::new(0).validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInput {
    /// Number of classes `K` (labels `0..K−1`).
    pub classes: usize,
    /// Whether the "no class" token (label `K`) exists.
    pub null_class: bool,
}

impl ClassInput {
    /// `classes` labels with the "no class" token.
    pub fn new(classes: usize) -> Self {
        ClassInput {
            classes,
            null_class: true,
        }
    }

    /// Columns of the one-hot input: the classes and the "no class" token's (present in the
    /// input even where the token is not, so that the layout is one).
    pub fn width(&self) -> usize {
        self.classes + 1
    }

    /// At least one class.
    pub fn validate(&self) -> Result<()> {
        if self.classes == 0 {
            return Err(invalid_config(
                "ClassInput",
                "classes",
                "a class input needs at least one class",
            ));
        }
        Ok(())
    }
}

/// The one-hot rows `[n, K + 1]` of `labels` (`None`: the "no class" token, column K).
pub(crate) fn one_hot<B: Backend>(
    labels: &[Option<usize>],
    input: ClassInput,
    device: &B::Device,
) -> Tensor<B, 2> {
    let width = input.width();
    let mut values = vec![0.0f32; labels.len() * width];
    for (row, label) in values.chunks_mut(width).zip(labels) {
        row[label.unwrap_or(input.classes).min(input.classes)] = 1.0;
    }
    Tensor::from_data(TensorData::new(values, [labels.len(), width]), device)
}

/// Whether a network whose class input is `current` must add `wanted` (`Ok(false)`: it has it
/// already); another class input than the one it has, or an invalid one, is an error.
pub(crate) fn must_add(current: Option<ClassInput>, wanted: ClassInput) -> Result<bool> {
    wanted.validate()?;
    match current {
        None => Ok(true),
        Some(current) if current == wanted => Ok(false),
        Some(current) => Err(crate::Error::InvalidArgument {
            name: "network",
            reason: format!("the network has the class input {current:?} already, not {wanted:?}"),
        }),
    }
}

/// The "no class" rows `[n, K + 1]` a plain call of a conditional network feeds (`None`
/// without a class input).
pub(crate) fn null_rows<B: Backend>(
    input: Option<ClassInput>,
    n: usize,
    device: &B::Device,
) -> Option<Tensor<B, 2>> {
    input.map(|input| one_hot(&vec![None; n], input, device))
}
