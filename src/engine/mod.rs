//! The engine: keys, cache, plan and scheduler. It knows stage kinds only through
//! the [`Stage`] trait and never imports anything about GANs.

pub mod cache;
pub mod plan;
pub mod registry;
pub mod run;
pub mod stage;
pub mod verify;

pub use cache::{Cache, Manifest};
pub use plan::{Plan, PlanOptions, PlanStatus};
pub use registry::Registry;
pub use run::{run, run_observed, Outcome as RunOutcome, RunEvent, RunOptions, Summary};
pub use stage::{
    normalised_params, typed_params, CheckCtx, DeviceChoice, Figure, FigureCtx, InputRef,
    Interrupted, Outcome, ParamError, Progress, PublishCtx, Resources, RunCtx, Stage, Status,
    Upstream, UpstreamInfo,
};
