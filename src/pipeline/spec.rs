//! The pipeline file: parsing and structural checks.
//!
//! A pipeline is `name`, `description` and `stages`; a stage is `kind`, `needs`,
//! `params` and `matrix`. Anything else is rejected with its position. Values are
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
const STAGE_KEYS: &[&str] = &["kind", "needs", "params", "matrix"];

impl Pipeline {
    /// Read and parse a pipeline file.
    pub fn load(file: &Path) -> Result<Pipeline, SpecError> {
        let source = std::fs::read_to_string(file)
            .map_err(|e| SpecError::new(file, None, format!("cannot read pipeline: {e}")))?;
        Pipeline::parse(file, &source)
    }

    /// Parse pipeline text; `file` is only used in messages.
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
        Ok(StageSpec {
            name: name.to_string(),
            kind,
            needs,
            params,
            matrix,
        })
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
