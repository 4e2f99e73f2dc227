//! Planning: every instance gets its key, and is either cached or to run, with why.
//!
//! Cached means a readable manifest whose status is not `failed` and whose outputs
//! still have the size and modification time it recorded (one `stat` per file; `ablate
//! verify` re-hashes). An unreadable manifest is warned about and the instance runs.

use super::cache::{instance_key, Cache, Manifest};
use super::registry::Registry;
use super::stage::{CheckCtx, ConfigError, Status, Upstream, UpstreamInfo};
use crate::pipeline::{expand, Expanded, Instance, Pipeline, SpecError};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// Cached or to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanStatus {
    Cached,
    Run,
}

/// One instance of the plan.
#[derive(Debug, Clone)]
pub struct Planned {
    pub key: String,
    /// Normalised params (defaults filled), as hashed.
    pub params: Value,
    pub status: PlanStatus,
    pub reason: String,
    pub forced: bool,
}

/// An expanded, validated pipeline with keys and cache status.
pub struct Plan {
    pub ex: Expanded,
    pub items: Vec<Planned>,
    pub cache: Cache,
}

/// The JSON form of one plan row (`ablate plan --format json`).
#[derive(Debug, Serialize)]
pub struct PlanRow<'a> {
    pub stage: &'a str,
    pub kind: &'a str,
    pub instance: &'a str,
    pub matrix: &'a serde_json::Map<String, Value>,
    pub key: &'a str,
    pub status: PlanStatus,
    pub reason: &'a str,
    pub inputs: Vec<&'a str>,
}

/// Parse, validate and expand a pipeline file. Errors are [`SpecError`]s (exit code 2).
pub fn load(file: &Path, reg: &Registry, root: &Path) -> Result<(Expanded, Vec<Value>), SpecError> {
    let p = Pipeline::load(file)?;
    let ex = expand(p, reg)?;
    let cx = CheckCtx { root };
    let mut params: Vec<Value> = Vec::with_capacity(ex.instances.len());
    // Instances of one stage often share params: check each distinct value once.
    let mut seen: BTreeMap<(usize, String), Value> = BTreeMap::new();
    for inst in &ex.instances {
        let stage = reg.get(&inst.kind).expect("expand checked kinds");
        let sig = (inst.stage, inst.params.to_string());
        let v = match seen.get(&sig) {
            Some(v) => v.clone(),
            None => {
                let v = stage
                    .check(&inst.params, &cx)
                    .map_err(|e| param_error(&ex, inst, e))?;
                seen.insert(sig, v.clone());
                v
            }
        };
        // Inputs come before their users, so their params are normalised already.
        let up = upstream(&ex, inst, reg, &params);
        stage
            .check_upstream(&v, &up)
            .map_err(|e| param_error(&ex, inst, e))?;
        params.push(v);
    }
    Ok((ex, params))
}

/// What planning knows of the instances upstream of `inst`.
fn upstream(ex: &Expanded, inst: &Instance, reg: &Registry, params: &[Value]) -> Upstream {
    let info = |i: usize| {
        let u = &ex.instances[i];
        UpstreamInfo {
            stage: u.stage_name.clone(),
            kind: u.kind.clone(),
            label: u.label.clone(),
            vars: u.vars.clone(),
            reports: reg.get(&u.kind).and_then(|k| k.reports(&params[i])),
        }
    };
    let mut seen: BTreeSet<usize> = inst.inputs.iter().copied().collect();
    let mut queue: VecDeque<usize> = inst
        .inputs
        .iter()
        .flat_map(|&i| ex.instances[i].inputs.iter().copied())
        .collect();
    let mut ancestors = vec![];
    while let Some(i) = queue.pop_front() {
        if seen.insert(i) {
            ancestors.push(info(i));
            queue.extend(ex.instances[i].inputs.iter().copied());
        }
    }
    Upstream {
        inputs: inst.inputs.iter().map(|&i| info(i)).collect(),
        ancestors,
    }
}

/// A stage's [`ConfigError`] as a [`SpecError`] at the param's place in the file.
fn param_error(ex: &Expanded, inst: &Instance, e: ConfigError) -> SpecError {
    let path = if e.key.is_empty() {
        format!("stages.{}.params", inst.stage_name)
    } else {
        format!("stages.{}.params.{}", inst.stage_name, e.key)
    };
    let what = if e.key.is_empty() {
        String::new()
    } else {
        format!(", param `{}`", e.key)
    };
    let at = if inst.vars.is_empty() {
        String::new()
    } else {
        format!(" (instance {})", inst.label)
    };
    let msg = format!("stage `{}`{what}{at}: {}", inst.stage_name, e.message);
    if e.at_key {
        ex.pipeline.err_key(&path, msg)
    } else {
        ex.pipeline.err_at(&path, msg)
    }
}

/// Options that change the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Stage names to re-run with everything downstream.
    pub force: Vec<String>,
}

impl Plan {
    /// Validate `file` and decide, instance by instance, what is cached.
    pub fn new(
        file: &Path,
        reg: &Registry,
        cache: Cache,
        root: &Path,
        opts: &PlanOptions,
    ) -> Result<Plan, SpecError> {
        let (ex, params) = load(file, reg, root)?;
        for f in &opts.force {
            if ex.pipeline.stage(f).is_none() {
                let names: Vec<&str> = ex.pipeline.stages.iter().map(|s| s.name.as_str()).collect();
                return Err(SpecError::new(
                    &ex.pipeline.file,
                    None,
                    format!("--force {f}: no such stage (stages: {})", names.join(", ")),
                ));
            }
        }
        let mut items: Vec<Planned> = Vec::with_capacity(ex.instances.len());
        let pipeline = ex.pipeline.name.clone();
        for (inst, params) in ex.instances.iter().zip(params) {
            let stage = reg.get(&inst.kind).unwrap();
            let input_keys: Vec<&str> =
                inst.inputs.iter().map(|&i| items[i].key.as_str()).collect();
            let key = instance_key(&inst.kind, stage.version(), &params, &input_keys);
            let forced_here = opts.force.contains(&inst.stage_name);
            let forced_up = inst.inputs.iter().any(|&i| items[i].forced);
            let manifest = cache.try_manifest(&inst.kind, &key).map_err(|e| {
                tracing::warn!("{e:#}: {} will be recomputed", inst.label);
                e
            });
            let (status, reason) = if forced_here {
                (
                    PlanStatus::Run,
                    format!("forced (--force {})", inst.stage_name),
                )
            } else if forced_up {
                (PlanStatus::Run, "forced upstream".to_string())
            } else {
                match &manifest {
                    Ok(Some(m)) if m.status != Status::Failed => match cache.changed_output(m) {
                        None => (PlanStatus::Cached, String::new()),
                        Some(why) => (PlanStatus::Run, why),
                    },
                    Ok(Some(m)) => (
                        PlanStatus::Run,
                        format!(
                            "last attempt failed: {}",
                            m.error
                                .as_deref()
                                .unwrap_or("?")
                                .lines()
                                .next()
                                .unwrap_or("")
                        ),
                    ),
                    Ok(None) => (
                        PlanStatus::Run,
                        why_new(&cache, &pipeline, &inst.label, &params, &input_keys),
                    ),
                    Err(e) => (
                        PlanStatus::Run,
                        format!("manifest unreadable ({})", e.root_cause()),
                    ),
                }
            };
            items.push(Planned {
                key,
                params,
                status,
                reason,
                forced: forced_here || forced_up,
            });
        }
        Ok(Plan { ex, items, cache })
    }

    pub fn rows(&self) -> Vec<PlanRow<'_>> {
        self.ex
            .instances
            .iter()
            .zip(&self.items)
            .map(|(inst, it)| PlanRow {
                stage: &inst.stage_name,
                kind: &inst.kind,
                instance: &inst.label,
                matrix: &inst.vars,
                key: &it.key,
                status: it.status,
                reason: &it.reason,
                inputs: inst
                    .inputs
                    .iter()
                    .map(|&i| self.ex.instances[i].label.as_str())
                    .collect(),
            })
            .collect()
    }

    /// How many instances are cached and how many will run.
    pub fn counts(&self) -> (usize, usize) {
        let cached = self
            .items
            .iter()
            .filter(|i| i.status == PlanStatus::Cached)
            .count();
        (cached, self.items.len() - cached)
    }

    /// The pipeline's results folder under `results_root`.
    pub fn results_dir(&self, results_root: &Path) -> PathBuf {
        results_root.join(&self.ex.pipeline.name)
    }
}

/// Why an instance without a manifest has to run: new, or what changed since last time.
fn why_new(cache: &Cache, pipeline: &str, label: &str, params: &Value, inputs: &[&str]) -> String {
    let Some((kind, key)) = cache.previous(pipeline, label) else {
        return "new".to_string();
    };
    let Some(prev): Option<Manifest> = cache.manifest(&kind, &key) else {
        return "not in the cache (removed?)".to_string();
    };
    let mut changed = vec![];
    diff_params(&prev.params, params, "", &mut changed);
    if !changed.is_empty() {
        changed.truncate(4);
        return format!("params changed: {}", changed.join(", "));
    }
    let prev_inputs: Vec<&str> = prev.inputs.iter().map(|i| i.key.as_str()).collect();
    if prev_inputs != inputs {
        let names: Vec<&str> = prev
            .inputs
            .iter()
            .filter(|i| !inputs.contains(&i.key.as_str()))
            .map(|i| i.stage.as_str())
            .collect();
        let mut names = names;
        names.dedup();
        return format!(
            "an input changed: {}",
            if names.is_empty() {
                "inputs".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    "the stage kind's version changed".to_string()
}

fn diff_params(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff_params(u, v, &p, out),
                    _ => out.push(p),
                }
            }
        }
        _ if a != b => out.push(if path.is_empty() {
            "params".into()
        } else {
            path.to_string()
        }),
        _ => {}
    }
}
