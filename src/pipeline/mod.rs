//! Pipeline files: YAML types, validation, matrix expansion and the stage DAG.
//!
//! This module never touches tensors or the cache: it turns a file into a list of
//! [`Instance`]s with resolved params, or a [`SpecError`] naming the file, line,
//! column and offending name.

pub mod dag;
pub mod error;
pub mod expand;
mod interpolate;
pub mod locate;
pub mod spec;

pub use error::SpecError;
pub use expand::{expand, short_value, Expanded, Instance, KindInfo};
pub use locate::{Pos, PosIndex};
pub use spec::{Matrix, Pipeline, StageResources, StageSpec};
