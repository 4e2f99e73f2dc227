//! The one trait every stage kind implements, and what the engine hands it.
//!
//! A stage kind is a pure function from (params, input artifacts) to an artifact
//! directory. The engine owns keys, locks, manifests and scheduling; the stage only
//! checks its params and fills `RunCtx::dir`.

use super::cache::Manifest;
use super::memo::Memo;
pub use crate::config_error::ConfigError;
pub use crate::device::DeviceChoice;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What validation may look at besides the params.
pub struct CheckCtx<'a> {
    /// Directory relative paths in params are resolved against (the working directory).
    pub root: &'a Path,
}

impl CheckCtx<'_> {
    /// Resolve a path from params, failing (as a [`ConfigError`]) when it does not exist.
    pub fn existing_path(&self, param: &str, p: &str) -> Result<PathBuf, ConfigError> {
        let path = self.root.join(p);
        if path.exists() {
            Ok(path)
        } else {
            Err(ConfigError::new(
                param,
                format!("`{p}` does not exist (looked for {})", path.display()),
            ))
        }
    }
}

/// One instance upstream of the instance being checked, as planning knows it.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    pub stage: String,
    pub kind: String,
    pub label: String,
    /// Its matrix values.
    pub vars: Map<String, Value>,
    /// What [`Stage::reports`] says of it: the metrics it will report, when known.
    pub reports: Option<Vec<String>>,
}

/// The instances upstream of the one being checked, before anything runs.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// Direct inputs, in `needs` order (every upstream instance for a gathering stage).
    pub inputs: Vec<UpstreamInfo>,
    /// Every instance further up (inputs of inputs, ...), each once, nearest first.
    pub ancestors: Vec<UpstreamInfo>,
}

/// What an instance of a kind uses while it runs, by default: the local scheduler reads
/// `gpu`; a cluster executor asks for all of it (a stage's `resources:` in YAML overrides
/// each field; `None`: the cluster's own default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Takes the (single) GPU slot locally; one GPU per instance on a cluster.
    pub gpu: bool,
    /// CPUs per instance on a cluster (locally the thread budget comes from `--threads`
    /// or the cores' share, so that defaults never change a local run).
    pub cpus: Option<usize>,
    /// Memory per instance, MiB.
    pub mem_mb: Option<u64>,
    /// Wall-clock limit, minutes.
    pub time_min: Option<u64>,
}

impl Resources {
    /// A kind's cluster defaults: CPUs, memory (MiB) and time (minutes), no GPU.
    pub fn cluster(cpus: usize, mem_mb: u64, time_min: u64) -> Resources {
        Resources {
            gpu: false,
            cpus: Some(cpus),
            mem_mb: Some(mem_mb),
            time_min: Some(time_min),
        }
    }
}

/// How an instance ended, as written to its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Ran to a result that is not usable (NaN losses): a result, not a crash.
    Diverged,
    Failed,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Diverged => "diverged",
            Status::Failed => "failed",
        }
    }
}

/// What a successful run reports back.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// Scalars that become table columns (`count`, `fid_judge`, `images_per_s`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Anything else worth keeping in the manifest (parameter counts, the step of divergence, ...).
    pub info: Map<String, Value>,
}

impl Outcome {
    pub fn ok() -> Self {
        Outcome {
            status: Status::Ok,
            metrics: BTreeMap::new(),
            info: Map::new(),
        }
    }
    pub fn metric(mut self, name: &str, v: f64) -> Self {
        self.metrics.insert(name.to_string(), v);
        self
    }
}

/// One upstream instance as a stage sees it.
#[derive(Debug, Clone)]
pub struct InputRef {
    pub stage: String,
    pub kind: String,
    pub label: String,
    pub key: String,
    /// Its artifact directory.
    pub dir: PathBuf,
    /// Its matrix values.
    pub vars: Map<String, Value>,
    pub manifest: Manifest,
    /// Its own ancestors (inputs, their inputs, ...), nearest first, each once: indices
    /// into [`RunCtx::ancestors`].
    pub ancestors: Vec<usize>,
}

/// Progress a long stage reports (steps done of total); cheap to update from a loop.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl Progress {
    pub fn set(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }
}

/// Everything a stage run gets.
pub struct RunCtx<'a> {
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub label: &'a str,
    pub key: &'a str,
    /// Resolved and normalised params (what the key hashes).
    pub params: &'a Value,
    pub vars: &'a Map<String, Value>,
    /// Direct inputs, in `needs` order (every upstream instance for a gathering stage).
    pub inputs: Vec<InputRef>,
    /// Every instance upstream of this one, direct inputs included, each once.
    pub ancestors: Vec<InputRef>,
    /// The artifact directory; files left from an interrupted run may be present.
    pub dir: &'a Path,
    /// Values derived from finished instances, shared between instances (the judge's
    /// features of a reference draw).
    pub memo: &'a Memo,
    pub device: DeviceChoice,
    /// Set when the user pressed Ctrl-C: return an error soon, leave no manifest.
    pub cancel: &'a AtomicBool,
    pub progress: Arc<Progress>,
}

impl RunCtx<'_> {
    /// Fail with "interrupted" when the user asked us to stop.
    pub fn check_cancel(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            anyhow::bail!(Interrupted)
        }
        Ok(())
    }

    /// Deserialise the params into the stage's own type.
    pub fn params<P: DeserializeOwned>(&self) -> anyhow::Result<P> {
        Ok(serde_json::from_value(self.params.clone())?)
    }

    /// The ancestors of one of this instance's inputs (or ancestors), nearest first.
    pub fn ancestors_of<'s>(&'s self, input: &'s InputRef) -> impl Iterator<Item = &'s InputRef> {
        input.ancestors.iter().map(|&i| &self.ancestors[i])
    }

    /// The first input of a given kind.
    pub fn input(&self, kind: &str) -> anyhow::Result<&InputRef> {
        self.inputs.iter().find(|i| i.kind == kind).ok_or_else(|| {
            anyhow::anyhow!(
                "stage `{}` needs a `{kind}` stage among its inputs",
                self.stage
            )
        })
    }
}

/// The error a cancelled stage returns.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// After a run, or when cached: where a stage may copy results for people.
pub struct PublishCtx<'a> {
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub dir: &'a Path,
    /// `results/<pipeline>/`.
    pub results: &'a Path,
}

/// A picture of one instance, for the HTML report.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    /// An SVG document (its text is drawn by the browser).
    Svg { title: String, svg: String },
    /// A picture file of the instance directory (`grid.png`), shown as it is.
    File { title: String, file: String },
}

/// What a stage kind may look at to draw an instance's figures.
pub struct FigureCtx<'a> {
    /// The instance directory (complete: its manifest exists).
    pub dir: &'a Path,
    pub manifest: &'a Manifest,
}

/// A stage kind.
pub trait Stage: Send + Sync {
    /// The `kind:` name in YAML.
    fn kind(&self) -> &'static str;
    /// Bump when the computation changes: it is part of every key.
    fn version(&self) -> u32;
    /// One line for `--help`-style listings.
    fn about(&self) -> &'static str;
    /// Gathering kinds (tabulate) take every upstream instance in one instance.
    fn gathers(&self) -> bool {
        false
    }
    /// Check params (types, ranges, files) and return them normalised, so that writing
    /// a default out explicitly does not change the key: plain defaults filled in,
    /// optional params equal to their default dropped (as if left unset), lists whose
    /// order does not matter sorted. [`normalised_params`] does the serde part.
    fn check(&self, params: &Value, cx: &CheckCtx) -> Result<Value, ConfigError>;
    /// Check the normalised params against the instances upstream (matrix values and
    /// metrics a gathering kind names). Called at plan time for every instance, after
    /// [`Stage::check`]; nothing to check by default.
    fn check_upstream(&self, _params: &Value, _upstream: &Upstream) -> Result<(), ConfigError> {
        Ok(())
    }
    /// The metric names an instance with these normalised params reports, when the
    /// kind can tell before running (a superset is fine); `None`: cannot tell.
    fn reports(&self, _params: &Value) -> Option<Vec<String>> {
        None
    }
    /// What an instance uses: the local GPU slot, and the defaults a cluster executor
    /// asks for (CPUs, memory, time) when the stage's `resources:` leaves them unset.
    fn resources(&self, _params: &Value, _device: DeviceChoice) -> Resources {
        Resources::default()
    }
    /// Do the work, writing into `cx.dir`.
    fn run(&self, cx: &RunCtx) -> anyhow::Result<Outcome>;
    /// Copy results out of the cache for people (tabulate writes `results/<pipeline>/`).
    fn publish(&self, _cx: &PublishCtx) -> anyhow::Result<()> {
        Ok(())
    }
    /// The figures of a finished instance for the report (plots as SVG, pictures it
    /// wrote). None by default.
    fn figures(&self, _cx: &FigureCtx) -> anyhow::Result<Vec<Figure>> {
        Ok(vec![])
    }
}

/// Deserialise params into `P` (serde with `deny_unknown_fields` on `P`), run its
/// range check, and return `P` re-serialised as the normalised params.
pub fn typed_params<P: DeserializeOwned + Serialize>(
    params: &Value,
    validate: impl FnOnce(&P) -> Result<(), ConfigError>,
) -> Result<Value, ConfigError> {
    normalised_params::<P>(params, |p| validate(p))
}

/// [`typed_params`] whose check may also normalise `P` in place (after its range
/// checks): set an optional param equal to its default back to `None`, sort a list
/// whose order means nothing. Unset optional params are left out of the result.
pub fn normalised_params<P: DeserializeOwned + Serialize>(
    params: &Value,
    check: impl FnOnce(&mut P) -> Result<(), ConfigError>,
) -> Result<Value, ConfigError> {
    let mut p: P = serde_path_to_error::deserialize(params.clone())
        .map_err(|e| ConfigError::from_serde(&e.path().to_string(), e.into_inner().to_string()))?;
    check(&mut p)?;
    let mut v = serde_json::to_value(&p).map_err(|e| ConfigError::new("", e.to_string()))?;
    drop_nulls(&mut v);
    Ok(v)
}

/// Remove null-valued keys at every level: an optional param left unset is absent, so
/// adding a new optional param to a kind does not change the keys of existing work.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}
