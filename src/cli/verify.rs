//! `ablate verify`: re-hash cached outputs against their manifests
//! ([`engine::verify`]) and say which changed.

use std::path::PathBuf;

use super::{cwd, human_bytes, Exit};
use crate::engine::{self, Cache, Plan, PlanOptions, Registry};

/// Re-hash the outputs of the pipelines' instances (every cached instance without
/// `files`), print each changed file and a summary, and with `drop` remove the damaged
/// instances. Exit code 1 when anything changed.
pub(super) fn run(
    cache: &Cache,
    files: &[PathBuf],
    reg: &Registry,
    drop: bool,
) -> Result<i32, Exit> {
    let mut instances = vec![];
    if files.is_empty() {
        for (kind, key, _) in cache.entries()? {
            instances.push((kind, key));
        }
    } else {
        for f in files {
            let plan = Plan::new(f, reg, cache.clone(), &cwd(), &PlanOptions::default())?;
            for (inst, it) in plan.ex.instances.iter().zip(&plan.items) {
                instances.push((inst.kind.clone(), it.key.clone()));
            }
        }
    }
    instances.sort();
    instances.dedup();
    let r = engine::verify::verify(cache, &instances)?;
    let mut damaged: Vec<(&str, &str)> = vec![];
    for p in &r.problems {
        let label = if p.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.label)
        };
        println!(
            "changed: {}/{}{label}: {}: {}",
            p.kind,
            &p.key[..12.min(p.key.len())],
            p.file,
            p.what
        );
        damaged.push((&p.kind, &p.key));
    }
    damaged.dedup();
    if drop {
        for (kind, key) in &damaged {
            cache.remove_instance(kind, key)?;
            println!("removed: {kind}/{}", &key[..12.min(key.len())]);
        }
    }
    println!(
        "verified {} instances, {} files ({}): {}",
        r.instances,
        r.files,
        human_bytes(r.bytes),
        if r.ok() {
            "all match their manifests".to_string()
        } else if drop {
            format!(
                "{} damaged, removed (the next run recomputes them)",
                damaged.len()
            )
        } else {
            format!(
                "{} damaged (ablate verify --drop removes them; the next run recomputes them)",
                damaged.len()
            )
        }
    );
    Ok(if r.ok() { 0 } else { 1 })
}
