//! The report's per-instance figures: what a stage kind draws ([`Stage::figures`]),
//! picture files copied beside the page as `figures/<safe label>/<file>`, and the
//! pruning of folders of instances the pipeline no longer has.
//!
//! [`Stage::figures`]: crate::engine::Stage::figures

use super::html::esc;
use super::FIGURES_DIR;
use crate::engine::{Figure, FigureCtx, Manifest, Registry};
use crate::util::atomic_write;
use anyhow::{Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// The figures of one finished instance: its kind's figures, with picture files
/// copied to `figures/<safe label>/`; other PNGs it wrote are linked.
pub(super) fn instance_figures(
    reg: &Registry,
    m: &Manifest,
    dir: &Path,
    figures_dir: &Path,
    safe: &str,
) -> Result<String> {
    let Some(stage) = reg.get(&m.kind) else {
        return Ok(String::new());
    };
    let figs = stage.figures(&FigureCtx { dir, manifest: m })?;
    let pngs: Vec<&String> = m
        .outputs
        .keys()
        .filter(|f| !f.contains('/') && f.ends_with(".png"))
        .collect();
    let own = figures_dir.join(safe);
    for f in &pngs {
        copy_if_changed(&dir.join(f), &own.join(f))?;
    }
    let mut h = String::new();
    if !figs.is_empty() {
        h.push_str("<div class=\"figs\">");
    }
    for f in &figs {
        match f {
            Figure::Svg { title, svg } => {
                let _ = write!(
                    h,
                    "<figure class=\"plot\" data-title=\"{}\">{svg}</figure>",
                    esc(title)
                );
            }
            Figure::File { title, file } => {
                copy_if_changed(&dir.join(file), &own.join(file))?;
                let src = format!("{FIGURES_DIR}/{safe}/{file}");
                let _ = write!(
                    h,
                    "<figure class=\"picture\"><img src=\"{0}\" alt=\"{1}\" loading=\"lazy\"><figcaption>{1} · <a href=\"{0}\">{2}</a></figcaption></figure>",
                    esc(&src),
                    esc(title),
                    esc(file)
                );
            }
        }
    }
    if !figs.is_empty() {
        h.push_str("</div>");
    }
    let shown: BTreeSet<&str> = figs
        .iter()
        .filter_map(|f| match f {
            Figure::File { file, .. } => Some(file.as_str()),
            _ => None,
        })
        .collect();
    let rest: Vec<String> = pngs
        .iter()
        .filter(|f| !shown.contains(f.as_str()))
        .map(|f| {
            let src = format!("{FIGURES_DIR}/{safe}/{f}");
            format!("<a href=\"{}\">{}</a>", esc(&src), esc(f))
        })
        .collect();
    if !rest.is_empty() {
        let _ = write!(h, "<p class=\"files\">pictures: {}</p>", rest.join(" · "));
    }
    Ok(h)
}

pub(super) fn copy_if_changed(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    if std::fs::read(dst).ok().as_deref() != Some(&bytes[..]) {
        atomic_write(dst, &bytes)?;
    }
    Ok(())
}

/// Remove figure folders of instances the pipeline no longer has.
pub(super) fn prune_figures(figures_dir: &Path, safe: &[String]) {
    let keep: BTreeSet<&str> = safe.iter().map(|s| s.as_str()).collect();
    let Ok(rd) = std::fs::read_dir(figures_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !keep.contains(name.as_str()) && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// File-name-safe, distinct names for instance labels: `train[objective=ns-r1,seed=0]`
/// becomes `train@objective=ns-r1,seed=0`; other unsafe characters become `_`.
pub fn safe_names<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    labels
        .map(|l| {
            let mut s: String = l
                .chars()
                .filter(|&c| c != ']')
                .map(|c| match c {
                    '[' => '@',
                    c if c.is_ascii_alphanumeric() || "._-+=,@".contains(c) => c,
                    _ => '_',
                })
                .collect();
            if s.len() > 120 {
                let h = blake3::hash(l.as_bytes()).to_hex();
                s = format!("{}~{}", &s[..100], &h[..12]);
            }
            if s.starts_with('.') {
                s.insert(0, '_');
            }
            let k = seen.entry(s.clone()).or_default();
            *k += 1;
            if *k > 1 {
                s = format!("{s}~{k}");
            }
            s
        })
        .collect()
}
