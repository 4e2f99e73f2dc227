//! `ablate gc`: drop the cache entries that none of the given pipelines uses
//! ([`engine::gc`]).

use std::path::PathBuf;

use super::{cwd, human_bytes, Exit};
use crate::engine::{self, Cache, Plan, PlanOptions, Registry};

/// Remove (or with `dry_run` list) every cache entry no instance of `files` keys, except
/// entries another ablate process is computing; prints what it freed.
pub(super) fn run(
    cache: &Cache,
    files: &[PathBuf],
    reg: &Registry,
    dry_run: bool,
) -> Result<i32, Exit> {
    let mut keep = std::collections::HashSet::new();
    for f in files {
        let plan = Plan::new(f, reg, cache.clone(), &cwd(), &PlanOptions::default())?;
        for (inst, it) in plan.ex.instances.iter().zip(&plan.items) {
            keep.insert((inst.kind.clone(), it.key.clone()));
        }
    }
    let r = engine::gc::collect(cache, &keep, dry_run)?;
    for (name, bytes) in &r.removed {
        tracing::info!(
            "{} {name} ({})",
            if dry_run { "would remove" } else { "removed" },
            human_bytes(*bytes)
        );
    }
    for name in &r.busy {
        tracing::warn!("kept {name}: another ablate process is computing it");
    }
    println!(
        "{} {} cache entries, {} {}",
        if dry_run { "would remove" } else { "removed" },
        r.removed.len(),
        if dry_run { "would free" } else { "freed" },
        human_bytes(r.freed())
    );
    Ok(0)
}
