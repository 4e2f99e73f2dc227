//! The engine: keys, cache, plan, scheduler and executors (local threads, Slurm). It knows stage kinds only through
//! the [`Stage`] trait and never imports anything about GANs.

pub mod cache;
pub mod gc;
pub mod instance;
pub mod memo;
pub mod plan;
pub mod registry;
pub mod run;
pub mod slurm;
pub mod stage;
pub mod verify;

pub use cache::{Cache, Manifest};
pub use memo::Memo;
pub use plan::{Plan, PlanOptions, PlanStatus};
pub use registry::Registry;
pub use run::{
    run, run_observed, Executor, ExecutorChoice, RunEvent, RunOptions, RunOutcome, Summary,
};
pub use slurm::SlurmOptions;
pub use stage::{
    normalised_params, typed_params, CheckCtx, ConfigError, DeviceChoice, Figure, FigureCtx,
    InputRef, Interrupted, Outcome, Progress, PublishCtx, Resources, RunCtx, Stage, Status,
    Upstream, UpstreamInfo,
};
