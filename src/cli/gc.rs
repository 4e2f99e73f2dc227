//! `ablate gc`: drop the cache entries that none of the given pipelines uses
//! ([`engine::gc`]).

use std::collections::HashSet;
use std::path::PathBuf;

use super::{cwd, human_bytes, Exit};
use crate::engine::{self, Cache, Plan, PlanOptions, Registry};

/// Remove (or with `dry_run` list) every cache entry no instance of `files` keys, or with
/// `stale` every entry [`engine::gc::stale`] finds, except entries another ablate process
/// is computing; prints what it freed.
pub(super) fn run(
    cache: &Cache,
    files: &[PathBuf],
    stale: bool,
    reg: &Registry,
    dry_run: bool,
) -> Result<i32, Exit> {
    let r = if stale {
        engine::gc::collect_stale(cache, |k| current(reg, k), dry_run)?
    } else {
        let mut keep = HashSet::new();
        for f in files {
            let plan = Plan::new(f, reg, cache.clone(), &cwd(), &PlanOptions::default())?;
            for (inst, it) in plan.ex.instances.iter().zip(&plan.items) {
                keep.insert((inst.kind.clone(), it.key.clone()));
            }
        }
        engine::gc::collect(cache, &keep, dry_run)?
    };
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

/// This ablate's version of stage kind `kind`, if it has that kind.
fn current(reg: &Registry, kind: &str) -> Option<u32> {
    reg.get(kind).map(|s| s.version())
}

/// After a run: one line on stderr when the cache holds entries that older versions of
/// their stages left behind (a stage version bump leaves every old entry of its kind, and
/// everything computed from them, unusable), with their size and the command that
/// removes them. Says nothing when there are none, or when the cache cannot be read.
pub(super) fn hint_stale(cache: &Cache, reg: &Registry) {
    let Ok(dead) = engine::gc::stale(cache, |k| current(reg, k)) else {
        return;
    };
    if dead.is_empty() {
        return;
    }
    let bytes: u64 = dead
        .iter()
        .map(|(_, _, dir)| engine::cache::disk_usage(dir))
        .sum();
    eprintln!(
        "cache: {} entries ({}) were computed by older versions of their stages and no \
         pipeline can use them again; `ablate gc --stale` removes them",
        dead.len(),
        human_bytes(bytes)
    );
}
