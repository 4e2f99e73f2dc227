//! The pipeline file: parsing and structural checks.
//!
//! A pipeline is `name`, `description` and `stages`; a stage is `kind`, `needs`,
//! `params`, `matrix` and `resources`. Anything else is rejected with its position. Values are
//! turned into JSON here (the canonical form we hash), so nothing downstream sees
//! YAML. Anchors, aliases and `<<` merge keys are resolved first.

use super::error::SpecError;
use super::locate::{Pos, PosIndex};
use serde_json::{Map, Value};
use serde_yaml_ng::Value as Yaml;
use std::path::{Path, PathBuf};

/// A parsed pipeline file, before matrix expansion.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    /// Stages in file order.
    pub stages: Vec<StageSpec>,
    pub pos: PosIndex,
}

/// One entry of `stages:`.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub kind: String,
    pub needs: Vec<String>,
    /// Always a JSON object (possibly with `${...}` strings still inside).
    pub params: Value,
    pub matrix: Option<Matrix>,
    /// What each instance may use (`resources:`); never part of the cache key.
    pub resources: StageResources,
}

/// A stage's `resources:` block: what each of its instances may use while it runs. It
/// changes how an instance is scheduled, never its result, so it stays out of the cache
/// key. `cpus` is also the local thread budget; the rest only matter to a cluster
/// executor (`--executor slurm`), where anything unset falls back to the kind's default
/// (`Stage::resources`) and then to the cluster's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageResources {
    /// Threads of the instance's own rayon pool (`None`: the scheduler's share); on a
    /// cluster, `--cpus-per-task`.
    pub cpus: Option<usize>,
    /// GPUs per instance on a cluster (`--gres=gpu:N`).
    pub gpus: Option<u32>,
    /// Memory per instance in MiB (`mem: 4G`, `500M`, or a number of MiB).
    pub mem_mb: Option<u64>,
    /// Wall-clock limit in minutes (`time: 90`, `"1:30:00"`, `"2-00:00:00"`).
    pub time_min: Option<u64>,
    /// Cluster partition (`--partition`).
    pub partition: Option<String>,
    /// More `sbatch` arguments, passed as they are (`extra: ["--qos=short"]`).
    pub extra: Vec<String>,
}

/// The keys `resources:` accepts.
pub const RESOURCE_KEYS: &[&str] = &["cpus", "gpus", "mem", "time", "partition", "extra"];

/// A memory size as Slurm writes it (`512M`, `4G`, `1T`, or a bare number of MiB) in MiB.
pub fn parse_mem_mb(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = num.parse().ok()?;
    let mb = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" | "M" => n,
        "K" => n.div_ceil(1024),
        "G" => n.checked_mul(1024)?,
        "T" => n.checked_mul(1024 * 1024)?,
        _ => return None,
    };
    (mb > 0).then_some(mb)
}

/// A time limit in one of Slurm's forms (`minutes`, `minutes:seconds`,
/// `hours:minutes:seconds`, `days-hours`, `days-hours:minutes`,
/// `days-hours:minutes:seconds`), in whole minutes (seconds rounded up).
pub fn parse_time_min(s: &str) -> Option<u64> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(d.parse::<u64>().ok()?), r),
        None => (None, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    (secs > 0).then_some(secs.div_ceil(60))
}

/// A stage's `matrix:` block.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    /// Axes in file order: name and values.
    pub axes: Vec<(String, Vec<Value>)>,
    /// Extra combinations (or extra keys for matching ones), as GitHub Actions has them.
    pub include: Vec<Map<String, Value>>,
    /// Combinations to drop: every listed key must match.
    pub exclude: Vec<Map<String, Value>>,
}

const TOP_KEYS: &[&str] = &["name", "description", "stages"];
const STAGE_KEYS: &[&str] = &["kind", "needs", "params", "matrix", "resources"];

impl Pipeline {
    /// Read and parse a pipeline file.
    pub fn load(file: &Path) -> Result<Pipeline, SpecError> {
        let source = std::fs::read_to_string(file)
            .map_err(|e| SpecError::new(file, None, format!("cannot read pipeline: {e}")))?;
        Pipeline::parse(file, &source)
    }

    /// Parse pipeline text; `file` is only used in messages.
    ///
    /// ```
    /// use ablate::pipeline::Pipeline;
    /// let ok = "name: p\nstages:\n  data: {kind: data, params: {count: 10}}\n";
    /// let p = Pipeline::parse("p.yaml".as_ref(), ok).unwrap();
    /// assert_eq!(p.name, "p");
    /// assert_eq!(p.stages[0].kind, "data");
    /// // Errors name the file, the line and column, and the offending key.
    /// let bad = "name: p\nstages:\n  data:\n    kind: data\n    nedds: [x]\n";
    /// let e = Pipeline::parse("p.yaml".as_ref(), bad).unwrap_err();
    /// assert_eq!(e.to_string().split(": ").next(), Some("p.yaml:5:5"));
    /// assert!(e.message.contains("`nedds`"), "{e}");
    /// ```
    pub fn parse(file: &Path, source: &str) -> Result<Pipeline, SpecError> {
        let cx = Cx {
            file: file.to_path_buf(),
            pos: PosIndex::build(source),
        };
        let mut doc: Yaml = serde_yaml_ng::from_str(source).map_err(|e| {
            let pos = e.location().map(|l| Pos {
                line: l.line(),
                col: l.column(),
            });
            let msg = e.to_string();
            let msg = match msg.find(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            };
            // `{seed: ${seed}}`: YAML reads `{` of `${` as a nested flow mapping
            let line = pos.and_then(|p| source.lines().nth(p.line.saturating_sub(1)));
            let hint = if line.is_some_and(|l| l.contains("${") && l.contains('{')) {
                "; a `${...}` reference inside a `{...}` flow mapping or `[...]` list must be \
                 quoted: `{seed: '${seed}'}` (a quoted whole-value reference keeps its type)"
            } else {
                ""
            };
            SpecError::new(file, pos, format!("malformed YAML: {msg}{hint}"))
        })?;
        doc.apply_merge()
            .map_err(|e| cx.err("", format!("bad merge key: {e}")))?;
        let top = match doc {
            Yaml::Mapping(m) => m,
            Yaml::Null => return Err(cx.err("", "the pipeline file is empty")),
            _ => return Err(cx.err("", "a pipeline must be a mapping with `name` and `stages`")),
        };
        let top = cx.object(Yaml::Mapping(top), "")?;
        cx.known_keys(&top, "", TOP_KEYS, "top-level key")?;
        let name = match top.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(_) => return Err(cx.err_value("name", "`name` must be a non-empty string")),
            None => return Err(cx.err("", "missing `name`")),
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(cx.err_value(
                "name",
                format!("`name` {name:?} may only use letters, digits, '-', '_' and '.' (it names a results folder)"),
            ));
        }
        let description = match top.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.trim().to_string(),
            Some(_) => return Err(cx.err_value("description", "`description` must be a string")),
        };
        let stages_v = match top.get("stages") {
            Some(Value::Object(m)) if !m.is_empty() => m,
            Some(_) => return Err(cx.err_value("stages", "`stages` must be a non-empty mapping")),
            None => return Err(cx.err("", "missing `stages`")),
        };
        let mut stages = Vec::new();
        for (sname, sv) in stages_v {
            stages.push(cx.stage(sname, sv)?);
        }
        // serde_json's map keeps insertion order, which is file order.
        Ok(Pipeline {
            file: file.to_path_buf(),
            name,
            description,
            stages,
            pos: cx.pos,
        })
    }

    /// The error type's constructor bound to this file and its positions.
    pub fn err_at(&self, path: &str, message: impl Into<String>) -> SpecError {
        SpecError::new(&self.file, self.pos.value(path), message)
    }

    /// Like [`Pipeline::err_at`] but pointing at the key rather than its value.
    pub fn err_key(&self, path: &str, message: impl Into<String>) -> SpecError {
        SpecError::new(&self.file, self.pos.key(path), message)
    }

    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

struct Cx {
    file: PathBuf,
    pos: PosIndex,
}

impl Cx {
    fn err(&self, path: &str, msg: impl Into<String>) -> SpecError {
        SpecError::new(&self.file, self.pos.key(path), msg)
    }
    fn err_value(&self, path: &str, msg: impl Into<String>) -> SpecError {
        SpecError::new(&self.file, self.pos.value(path), msg)
    }

    fn known_keys(
        &self,
        m: &Map<String, Value>,
        path: &str,
        allowed: &[&str],
        what: &str,
    ) -> Result<(), SpecError> {
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                return Err(self.err(
                    &p,
                    format!(
                        "unknown {what} `{k}` (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// YAML -> JSON, rejecting what JSON cannot say (tags, non-scalar keys).
    fn json(&self, y: Yaml, path: &str) -> Result<Value, SpecError> {
        Ok(match y {
            Yaml::Null => Value::Null,
            Yaml::Bool(b) => Value::Bool(b),
            Yaml::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    serde_json::Number::from_f64(f)
                        .map(Value::Number)
                        .ok_or_else(|| {
                            self.err_value(path, format!("`{path}`: {f} is not a finite number"))
                        })?
                }
            }
            Yaml::String(s) => Value::String(s),
            Yaml::Sequence(seq) => {
                let mut out = Vec::with_capacity(seq.len());
                for (i, v) in seq.into_iter().enumerate() {
                    out.push(self.json(v, &format!("{path}.{i}"))?);
                }
                Value::Array(out)
            }
            Yaml::Mapping(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    let key = match k {
                        Yaml::String(s) => s,
                        Yaml::Number(n) => n.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        _ => {
                            return Err(self.err_value(
                                path,
                                format!("`{path}`: mapping keys must be scalars"),
                            ))
                        }
                    };
                    let p = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    let v = self.json(v, &p)?;
                    out.insert(key, v);
                }
                Value::Object(out)
            }
            Yaml::Tagged(t) => {
                return Err(self.err_value(
                    path,
                    format!("`{path}`: YAML tags ({}) are not supported", t.tag),
                ))
            }
        })
    }

    fn object(&self, y: Yaml, path: &str) -> Result<Map<String, Value>, SpecError> {
        match self.json(y, path)? {
            Value::Object(m) => Ok(m),
            _ => Err(self.err_value(path, format!("`{path}` must be a mapping"))),
        }
    }

    fn stage(&self, name: &str, v: &Value) -> Result<StageSpec, SpecError> {
        let path = format!("stages.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.err(
                &path,
                format!("stage name {name:?} may only use letters, digits, '-' and '_'"),
            ));
        }
        let m = match v {
            Value::Object(m) => m,
            _ => {
                return Err(self.err_value(
                    &path,
                    format!("stage `{name}` must be a mapping with at least `kind`"),
                ))
            }
        };
        self.known_keys(m, &path, STAGE_KEYS, &format!("key in stage `{name}`:"))?;
        let kind = match m.get("kind") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(self.err_value(
                    &format!("{path}.kind"),
                    format!("stage `{name}`: `kind` must be a string"),
                ))
            }
            None => return Err(self.err(&path, format!("stage `{name}` has no `kind`"))),
        };
        let needs = match m.get("needs") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => {
                let mut out = vec![];
                for (i, x) in a.iter().enumerate() {
                    match x {
                        Value::String(s) => out.push(s.clone()),
                        _ => {
                            return Err(self.err_value(
                                &format!("{path}.needs.{i}"),
                                format!("stage `{name}`: `needs` lists stage names"),
                            ))
                        }
                    }
                }
                out
            }
            Some(_) => {
                return Err(self.err_value(
                    &format!("{path}.needs"),
                    format!("stage `{name}`: `needs` must be a list of stage names"),
                ))
            }
        };
        let params = match m.get("params") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::Object(p)) => Value::Object(p.clone()),
            Some(_) => {
                return Err(self.err_value(
                    &format!("{path}.params"),
                    format!("stage `{name}`: `params` must be a mapping"),
                ))
            }
        };
        let matrix = match m.get("matrix") {
            None | Some(Value::Null) => None,
            Some(Value::Object(mm)) => Some(self.matrix(name, &format!("{path}.matrix"), mm)?),
            Some(_) => {
                return Err(self.err_value(
                    &format!("{path}.matrix"),
                    format!("stage `{name}`: `matrix` must be a mapping of axis names to lists"),
                ))
            }
        };
        let resources = match m.get("resources") {
            None | Some(Value::Null) => StageResources::default(),
            Some(Value::Object(r)) => self.resources(name, &format!("{path}.resources"), r)?,
            Some(_) => {
                return Err(self.err_value(
                    &format!("{path}.resources"),
                    format!("stage `{name}`: `resources` must be a mapping, e.g. {{cpus: 2}}"),
                ))
            }
        };
        Ok(StageSpec {
            name: name.to_string(),
            kind,
            needs,
            params,
            matrix,
            resources,
        })
    }

    fn resources(
        &self,
        stage: &str,
        path: &str,
        m: &Map<String, Value>,
    ) -> Result<StageResources, SpecError> {
        self.known_keys(
            m,
            path,
            RESOURCE_KEYS,
            &format!("resource in stage `{stage}`:"),
        )?;
        let mut out = StageResources::default();
        let bad = |key: &str, want: &str, v: &Value| {
            self.err_value(
                &format!("{path}.{key}"),
                format!("stage `{stage}`: `resources.{key}` must be {want}, got {v}"),
            )
        };
        if let Some(v) = m.get("cpus") {
            match v.as_u64() {
                Some(n) if n >= 1 => out.cpus = Some(n as usize),
                _ => return Err(bad("cpus", "a whole number >= 1", v)),
            }
        }
        if let Some(v) = m.get("gpus") {
            match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => out.gpus = Some(n),
                _ => return Err(bad("gpus", "a whole number >= 0", v)),
            }
        }
        if let Some(v) = m.get("mem") {
            let mb = match v {
                Value::Number(n) => n.as_u64().filter(|&n| n > 0),
                Value::String(s) => parse_mem_mb(s),
                _ => None,
            };
            match mb {
                Some(mb) => out.mem_mb = Some(mb),
                None => return Err(bad("mem", "a size such as 512M, 4G or a number of MiB", v)),
            }
        }
        if let Some(v) = m.get("time") {
            let min = match v {
                Value::Number(n) => n.as_u64().filter(|&n| n > 0),
                Value::String(s) => parse_time_min(s),
                _ => None,
            };
            match min {
                Some(min) => out.time_min = Some(min),
                None => {
                    return Err(bad(
                        "time",
                        "minutes or a Slurm time such as \"1:30:00\" or \"2-00:00:00\"",
                        v,
                    ))
                }
            }
        }
        if let Some(v) = m.get("partition") {
            match v
                .as_str()
                .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
            {
                Some(s) => out.partition = Some(s.to_string()),
                None => return Err(bad("partition", "a partition name", v)),
            }
        }
        if let Some(v) = m.get("extra") {
            let list = v.as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().filter(|s| s.starts_with('-')).map(String::from))
                    .collect::<Option<Vec<_>>>()
            });
            match list {
                Some(l) => out.extra = l,
                None => {
                    return Err(bad(
                        "extra",
                        "a list of sbatch options such as [\"--qos=short\"]",
                        v,
                    ))
                }
            }
        }
        Ok(out)
    }

    fn matrix(&self, stage: &str, path: &str, m: &Map<String, Value>) -> Result<Matrix, SpecError> {
        let mut out = Matrix::default();
        for (k, v) in m {
            let p = format!("{path}.{k}");
            match k.as_str() {
                "include" | "exclude" => {
                    let list = match v {
                        Value::Array(a) => a,
                        _ => {
                            return Err(self.err_value(
                                &p,
                                format!("stage `{stage}`: matrix `{k}` must be a list of mappings"),
                            ))
                        }
                    };
                    let mut entries = vec![];
                    for (i, e) in list.iter().enumerate() {
                        match e {
                            Value::Object(o) if !o.is_empty() => entries.push(o.clone()),
                            _ => return Err(self.err_value(&format!("{p}.{i}"), format!("stage `{stage}`: each matrix `{k}` entry must be a non-empty mapping of axis values"))),
                        }
                    }
                    if k == "include" {
                        out.include = entries;
                    } else {
                        out.exclude = entries;
                    }
                }
                axis => {
                    if axis.contains('.') || axis.contains('$') {
                        return Err(self.err(&p, format!("stage `{stage}`: matrix axis name `{axis}` may not contain '.' or '$'")));
                    }
                    match v {
                        Value::Array(a) if a.is_empty() => {
                            return Err(self.err_value(
                                &p,
                                format!("stage `{stage}`: matrix axis `{axis}` is empty"),
                            ))
                        }
                        Value::Array(a) => out.axes.push((axis.to_string(), a.clone())),
                        _ => {
                            return Err(self.err_value(
                                &p,
                                format!(
                                "stage `{stage}`: matrix axis `{axis}` must be a list of values"
                            ),
                            ))
                        }
                    }
                }
            }
        }
        for (list, what) in [(&out.exclude, "exclude")] {
            for (i, e) in list.iter().enumerate() {
                for k in e.keys() {
                    if !out.axes.iter().any(|(a, _)| a == k) {
                        return Err(self.err(
                            &format!("{path}.{what}.{i}.{k}"),
                            format!(
                                "stage `{stage}`: matrix exclude names `{k}`, which is not an axis"
                            ),
                        ));
                    }
                }
            }
        }
        if out.axes.is_empty() && out.include.is_empty() {
            return Err(self.err(path, format!("stage `{stage}`: matrix has no axes")));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod resource_tests;
