//! `${axis}` and `${axis.field}` references in a stage's params, replaced by an
//! instance's matrix values ([`substitute`]); a string that is only a reference keeps the
//! value's type, and an unresolved reference is an error at the param's position.

use super::error::SpecError;
use super::spec::{Pipeline, StageSpec};
use serde_json::{Map, Value};

/// Resolve `${...}` references inside one stage's params.
pub(super) fn substitute(
    p: &Pipeline,
    s: &StageSpec,
    v: &Value,
    path: &str,
    vars: &Map<String, Value>,
) -> Result<Value, SpecError> {
    let at = |sub: &str| {
        if sub.is_empty() {
            format!("stages.{}.params", s.name)
        } else {
            format!("stages.{}.params.{sub}", s.name)
        }
    };
    let child = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    Ok(match v {
        Value::String(text) if text.contains("${") => {
            let refs = find_refs(text).map_err(|msg| {
                p.err_at(
                    &at(path),
                    format!("stage `{}`, param `{path}`: {msg}", s.name),
                )
            })?;
            let lookup = |r: &str| -> Result<Value, SpecError> {
                resolve(vars, r).ok_or_else(|| {
                    let mut axes: Vec<&String> = vars.keys().collect();
                    axes.sort();
                    let axes = axes.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ");
                    p.err_at(
                        &at(path),
                        format!(
                            "stage `{}`, param `{path}`: unresolved `${{{r}}}` (matrix values here: {})",
                            s.name,
                            if axes.is_empty() { "none".to_string() } else { axes }
                        ),
                    )
                })
            };
            if refs.len() == 1 && refs[0].0 == 0 && refs[0].1 == text.len() {
                lookup(&refs[0].2)?
            } else {
                let mut out = String::new();
                let mut last = 0;
                for (a, b, r) in &refs {
                    out.push_str(&text[last..*a]);
                    match lookup(r)? {
                        Value::String(x) => out.push_str(&x),
                        other => out.push_str(&other.to_string()),
                    }
                    last = *b;
                }
                out.push_str(&text[last..]);
                Value::String(out)
            }
        }
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, x) in a.iter().enumerate() {
                out.push(substitute(p, s, x, &child(&i.to_string()), vars)?);
            }
            Value::Array(out)
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(k.clone(), substitute(p, s, x, &child(k), vars)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// `(start, end, name)` of every `${name}` in `text`.
fn find_refs(text: &str) -> Result<Vec<(usize, usize, String)>, String> {
    let mut out = vec![];
    let mut i = 0;
    while let Some(off) = text[i..].find("${") {
        let a = i + off;
        let close = text[a..]
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in {text:?}"))?;
        let name = text[a + 2..a + close].trim().to_string();
        if name.is_empty() {
            return Err("empty `${}`".to_string());
        }
        out.push((a, a + close + 1, name));
        i = a + close + 1;
    }
    Ok(out)
}

/// `axis` or `axis.field.subfield` in the instance's matrix values.
fn resolve(vars: &Map<String, Value>, r: &str) -> Option<Value> {
    let mut parts = r.split('.');
    let mut cur = vars.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_are_found_and_resolved() {
        assert_eq!(
            find_refs("a${x}b${ y.z }").unwrap(),
            vec![(1, 5, "x".into()), (6, 14, "y.z".into())]
        );
        let vars = json!({"o": {"loss": "rpgan", "pen": ["r1", "r2"]}});
        let vars = vars.as_object().unwrap();
        assert_eq!(resolve(vars, "o.pen"), Some(json!(["r1", "r2"])));
        assert_eq!(resolve(vars, "o.pen.1"), Some(json!("r2")));
        assert_eq!(resolve(vars, "o.nope"), None);
        assert!(find_refs("${x").is_err());
    }
}
