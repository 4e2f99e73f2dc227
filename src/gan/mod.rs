//! GAN networks, losses, penalties and the training loop (on [`crate::nn`]).
//!
//! Entry points: [`TrainConfig`] (the `train` stage params, `validate()`), [`Trainer`]
//! (`new`, `step`, `save_checkpoint`, `load_checkpoint`, `sample`) on a
//! [`crate::data::DataTensor`].

pub mod config;
pub mod losses;
pub mod nets;
pub mod sample;
pub mod trainer;

#[cfg(test)]
mod cond_tests;
#[cfg(test)]
mod defer_tests;
#[cfg(test)]
mod nets_tests;
#[cfg(test)]
mod penalty_tests;
#[cfg(test)]
mod tests;

pub use config::{Arch, LossKind, NetConfig, OptimConfig, Penalty, TrainConfig, Upsample, Variant};
pub use nets::DataShape;
pub use sample::{
    balanced_labels, checkpoint_shape, sample_checkpoint, sample_checkpoint_on, sample_net, Samples,
};
pub use trainer::{ClassLabels, StepLog, Trainer};
