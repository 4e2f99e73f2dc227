//! Stage kinds: one file per kind, each implementing [`crate::engine::Stage`].
//! This is the only place that joins the engine to the numerical libraries.

pub mod data;
pub mod evaluate;
pub mod judge;
pub mod sample;
pub mod tabulate;
pub mod train;

use crate::engine::Registry;

/// Every built-in stage kind.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(data::Data);
    r.register(train::Train);
    r.register(sample::Sample);
    r.register(judge::Judge);
    r.register(evaluate::Evaluate);
    r.register(tabulate::Tabulate);
    r
}
