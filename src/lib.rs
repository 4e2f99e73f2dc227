//! ablate: declarative, cached, parallel GAN ablation pipelines.
//!
//! The data path: [`pipeline`] (YAML -> validated, expanded instances) ->
//! [`engine`] (keys, cache, scheduler; knows no GAN) -> [`stages`] (one file per
//! stage kind, the only place that joins the engine to the numerical code) ->
//! the libraries that never read YAML: `data`, `nn`, `gan`, `metrics`, [`results`].

pub mod cli;
pub mod config_error;
pub mod data;
pub mod device;
pub mod engine;
pub mod gan;
pub mod logging;
pub mod metrics;
pub mod nn;
pub mod pipeline;
pub mod results;
pub mod stages;
pub mod util;
