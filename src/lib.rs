//! ablate: declarative, cached, parallel GAN ablation pipelines.
//!
//! The data path (see DESIGN.md in the README):
//! `pipeline` (YAML -> validated, expanded spec) -> `engine` (keys, cache,
//! scheduler; knows no GAN) -> `stages` (one file per stage kind, the only place
//! that joins the engine to the numerical code) -> `data`, `nn`, `gan`, `metrics`,
//! `results` (the numerical and tabular libraries, which never read YAML).
pub mod gan;
pub mod nn;
