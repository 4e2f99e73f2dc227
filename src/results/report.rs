//! The report: one HTML page per pipeline, `results/<pipeline>/report.html`.
//!
//! It opens from disk with no server and no network: CSS, the few lines of script
//! (sortable tables, an error log the end-to-end test reads) and every plot (SVG) are
//! inline; pictures the stages wrote (sample grids, data previews, `loss.png`, ...)
//! are copied beside it as `figures/<instance label>/<file>.png`, so each has a name
//! a person can read. The page shows:
//! - a header (pipeline, description, ablate version, device, when it ran, the command
//!   that reproduces it) and the stage graph with per-stage counts;
//! - instances that diverged, failed or were skipped, with their reason;
//! - every table the pipeline's gathering stages published (`<stage>`, `<stage>_agg`
//!   with mean ± std, and any other `<stage>_*` table), sortable;
//! - for each gathered metric, a plot against each matrix axis (one line per value of
//!   the other axes, error bars over the `aggregate_over` axes);
//! - per instance: its state, metrics and the figures its stage kind draws
//!   ([`Stage::figures`](crate::engine::Stage::figures)): this module knows no stage kind by name.
//!
//! `ablate run` rewrites the page as instances finish through [`Reporter::observe`],
//! rate-limited; `ablate report` writes it once from the cache.
//!
//! This file assembles the page ([`Reporter::render`]); its parts live beside it:
//! `sections.rs` (stage graph, tables), `charts.rs` (metric-against-axis plots),
//! `figures.rs` (each instance's figures and picture files), `html.rs` (escaping,
//! times, inline CSS and scripts).

mod charts;
mod figures;
mod html;
mod sections;

pub use charts::{axis_charts, mean_std, Obs};
pub use figures::safe_names;
pub use html::{esc, utc};

use figures::{instance_figures, prune_figures};
use html::{human_secs, now_s, CSS, ERROR_LOG_JS, SORT_JS};
use sections::{stage_graph, table_html};

use super::plots::Chart;
use super::query::pipeline_tables;
use super::table::show_value;
use crate::engine::{Manifest, Plan, Registry, RunEvent, RunOutcome, Status};
use crate::pipeline::short_value;
use crate::util::atomic_write;
use anyhow::Result;
use polars::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The report's file name inside `results/<pipeline>/`.
pub const REPORT_FILE: &str = "report.html";
/// Folder (beside the report) of the pictures stages wrote, by instance label.
pub const FIGURES_DIR: &str = "figures";

/// Where one instance stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Pending,
    Running,
    /// Done before this run (or, for `ablate report`, done at all).
    Cached,
    Ran,
    Diverged(String),
    Failed(String),
    Skipped(String),
    Interrupted,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Cached => "cached",
            State::Ran => "ran",
            State::Diverged(_) => "diverged",
            State::Failed(_) => "failed",
            State::Skipped(_) => "skipped",
            State::Interrupted => "interrupted",
        }
    }
    fn reason(&self) -> Option<&str> {
        match self {
            State::Diverged(r) | State::Failed(r) | State::Skipped(r) => Some(r),
            _ => None,
        }
    }
}

/// The scheduler's view, when the report is written during a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot<'a> {
    pub outcomes: Option<&'a [Option<RunOutcome>]>,
    pub running: &'a [usize],
}

/// Writes one pipeline's report, remembering what does not change between rewrites.
pub struct Reporter {
    out: PathBuf,
    command: String,
    device: String,
    /// Instance figure HTML by (key, finish time): a finished instance's figures are fixed.
    memo: HashMap<(String, u64), String>,
    last: Option<Instant>,
    last_cost: Duration,
    pending: bool,
    /// Shortest time between two rewrites during a run.
    pub min_interval: Duration,
}

impl Reporter {
    /// `out`: the page (default `results/<pipeline>/report.html`); `command`: the
    /// command line that reproduces the run; `device`: what `--device` asked for.
    pub fn new(
        plan: &Plan,
        results_root: &Path,
        out: Option<PathBuf>,
        command: String,
        device: String,
    ) -> Reporter {
        let out = out.unwrap_or_else(|| plan.results_dir(results_root).join(REPORT_FILE));
        Reporter {
            out,
            command,
            device,
            memo: HashMap::new(),
            last: None,
            last_cost: Duration::ZERO,
            pending: false,
            min_interval: Duration::from_secs(2),
        }
    }

    pub fn path(&self) -> &Path {
        &self.out
    }

    /// Whether a rewrite is due at `now` after this event: always for the first one;
    /// afterwards only when something finished since the last write and at least
    /// `min_interval` (or ten times the last write's cost, whichever is longer) passed.
    /// Deferred changes are written on a later tick.
    pub fn due(&mut self, finished: bool, now: Instant) -> bool {
        self.pending |= finished;
        match self.last {
            None => true,
            Some(t) => {
                let wait = self.min_interval.max(self.last_cost * 10);
                self.pending && now.duration_since(t) >= wait
            }
        }
    }

    /// The scheduler hook: rewrite the page when due. A failure to write is a warning;
    /// the run goes on.
    pub fn observe(&mut self, plan: &Plan, reg: &Registry, results_root: &Path, ev: &RunEvent) {
        if !self.due(ev.finished.is_some(), Instant::now()) {
            return;
        }
        let snap = Snapshot {
            outcomes: Some(ev.outcomes),
            running: ev.running,
        };
        if let Err(e) = self.write(plan, reg, results_root, &snap) {
            tracing::warn!("report {}: {e:#}", self.out.display());
        }
    }

    /// Write the page now (atomically); returns its path.
    pub fn write(
        &mut self,
        plan: &Plan,
        reg: &Registry,
        results_root: &Path,
        snap: &Snapshot,
    ) -> Result<PathBuf> {
        let t = Instant::now();
        let html = self.render(plan, reg, results_root, snap)?;
        atomic_write(&self.out, html.as_bytes())?;
        self.last = Some(Instant::now());
        self.last_cost = t.elapsed();
        self.pending = false;
        Ok(self.out.clone())
    }

    fn figures_dir(&self) -> PathBuf {
        self.out
            .parent()
            .unwrap_or(Path::new("."))
            .join(FIGURES_DIR)
    }

    /// The whole page.
    pub fn render(
        &mut self,
        plan: &Plan,
        reg: &Registry,
        results_root: &Path,
        snap: &Snapshot,
    ) -> Result<String> {
        let ex = &plan.ex;
        let n = ex.instances.len();
        let manifests: Vec<Option<Manifest>> = ex
            .instances
            .iter()
            .zip(&plan.items)
            .map(|(inst, it)| plan.cache.manifest(&inst.kind, &it.key))
            .collect();
        let states = states(plan, &manifests, snap);
        let safe = safe_names(ex.instances.iter().map(|i| i.label.as_str()));

        let mut h = String::with_capacity(1 << 16);
        let name = &ex.pipeline.name;
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\" data-errors=\"\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"generator\" content=\"ablate {}\">\n<title>{} — ablate report</title>\n\
             <script>{ERROR_LOG_JS}</script>\n<style>{CSS}</style>\n</head>\n<body>\n",
            env!("CARGO_PKG_VERSION"),
            esc(name)
        );

        // Header.
        let _ = write!(h, "<header><h1>{}</h1>", esc(name));
        if !ex.pipeline.description.trim().is_empty() {
            let _ = write!(
                h,
                "<p class=\"desc\">{}</p>",
                esc(ex.pipeline.description.trim())
            );
        }
        let done: Vec<&Manifest> = manifests.iter().flatten().collect();
        let started = done
            .iter()
            .map(|m| m.timings.started)
            .fold(f64::INFINITY, f64::min);
        let finished = done.iter().map(|m| m.timings.finished).fold(0.0, f64::max);
        let mut devices: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &done {
            *devices.entry(m.device.as_str()).or_default() += 1;
        }
        let devices = if devices.is_empty() {
            "—".to_string()
        } else {
            devices
                .iter()
                .map(|(d, k)| format!("{d} ({k} instance{})", if *k == 1 { "" } else { "s" }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let versions: BTreeSet<&str> = done.iter().map(|m| m.crate_version.as_str()).collect();
        let mut version = env!("CARGO_PKG_VERSION").to_string();
        if versions.iter().any(|v| *v != version) {
            let vs: Vec<&str> = versions.into_iter().collect();
            version.push_str(&format!(" (instances computed by {})", vs.join(", ")));
        }
        let ran = if started.is_finite() {
            format!("{} → {}", utc(started), utc(finished))
        } else {
            "not yet".to_string()
        };
        let in_progress = snap.outcomes.is_some()
            && states
                .iter()
                .any(|s| matches!(s, State::Pending | State::Running));
        let _ = write!(
            h,
            "<dl class=\"meta\"><dt>ablate</dt><dd>{}</dd><dt>device</dt><dd>{} <span class=\"muted\">(asked: {})</span></dd>\
             <dt>ran</dt><dd>{} UTC</dd><dt>reproduce</dt><dd><code>{}</code></dd>\
             <dt>report written</dt><dd id=\"written\">{} UTC{}</dd></dl>",
            esc(&version),
            esc(&devices),
            esc(&self.device),
            esc(&ran),
            esc(&self.command),
            utc(now_s()),
            if in_progress { " — <b>run in progress</b>: reload to update" } else { "" }
        );
        h.push_str("<nav><a href=\"#stages\">stages</a> <a href=\"#problems\">problems</a> <a href=\"#tables\">tables</a> <a href=\"#plots\">plots</a> <a href=\"#instances\">instances</a></nav></header>\n<main>\n");

        // Stage graph and counts.
        h.push_str(&stage_graph(plan, &states));

        // Problems.
        h.push_str("<section id=\"problems\"><h2>Diverged, failed and skipped</h2>");
        let problems: Vec<usize> = (0..n).filter(|&i| states[i].reason().is_some()).collect();
        if problems.is_empty() {
            h.push_str("<p class=\"muted\">None.</p>");
        } else {
            h.push_str("<ul class=\"problems\">");
            for i in problems {
                let _ = write!(
                    h,
                    "<li class=\"st-{}\"><a href=\"#i{i}\">{}</a> <span class=\"badge st-{}\">{}</span> {}</li>",
                    states[i].name(),
                    esc(&ex.instances[i].label),
                    states[i].name(),
                    states[i].name(),
                    esc(states[i].reason().unwrap_or(""))
                );
            }
            h.push_str("</ul>");
        }
        h.push_str("</section>\n");

        // Tables.
        h.push_str("<section id=\"tables\"><h2>Tables</h2>");
        let dir = plan.results_dir(results_root);
        let mut tables: Vec<(String, DataFrame)> = vec![];
        let all = pipeline_tables(&dir).unwrap_or_default();
        let gathering: Vec<&str> = ex
            .stage_order
            .iter()
            .map(|&si| &ex.pipeline.stages[si])
            .filter(|s| reg.get(&s.kind).is_some_and(|k| k.gathers()))
            .map(|s| s.name.as_str())
            .collect();
        for s in &gathering {
            let mut mine: Vec<(&String, &DataFrame)> = all
                .iter()
                .filter(|(t, _)| *t == s || t.strip_prefix(s).is_some_and(|r| r.starts_with('_')))
                .filter(|(t, _)| !tables.iter().any(|(u, _)| u == *t))
                .collect();
            // The stage's own table first, then `_agg`, then the rest by name.
            mine.sort_by_key(|(t, _)| (t.as_str() != *s, !t.ends_with("_agg"), t.to_string()));
            tables.extend(mine.into_iter().map(|(t, d)| (t.clone(), d.clone())));
        }
        if tables.is_empty() {
            h.push_str("<p class=\"muted\">No tables yet: gathering stages publish them when they finish.</p>");
        }
        let stage_names: BTreeSet<&str> =
            ex.pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        for (t, df) in &tables {
            h.push_str(&table_html(t, df, &stage_names));
        }
        h.push_str("</section>\n");

        // Metric against matrix axes.
        h.push_str("<section id=\"plots\"><h2>Metrics against each matrix axis</h2>");
        let mut any_plot = false;
        for &si in &ex.stage_order {
            let s = &ex.pipeline.stages[si];
            if !reg.get(&s.kind).is_some_and(|k| k.gathers()) {
                continue;
            }
            for &g in &ex.by_stage[si] {
                let over: Vec<String> = plan.items[g]
                    .params
                    .get("aggregate_over")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let obs: Vec<Obs> = ex.instances[g]
                    .inputs
                    .iter()
                    .filter(|&&u| matches!(states[u], State::Cached | State::Ran))
                    .filter_map(|&u| {
                        let m = manifests[u].as_ref()?;
                        Some(Obs {
                            vars: ex.instances[u]
                                .vars
                                .iter()
                                .map(|(k, v)| (k.clone(), short_value(v)))
                                .collect(),
                            metrics: m.metrics.clone(),
                        })
                    })
                    .collect();
                let excluded = ex.instances[g]
                    .inputs
                    .iter()
                    .filter(|&&u| matches!(states[u], State::Diverged(_) | State::Failed(_)))
                    .count();
                let charts = axis_charts(&obs, &over);
                if charts.is_empty() {
                    continue;
                }
                any_plot = true;
                let _ = write!(
                    h,
                    "<h3>{} <span class=\"muted\">({} instances{}{})</span></h3><div class=\"grid\">",
                    esc(&s.name),
                    obs.len(),
                    if over.is_empty() { String::new() } else { format!(", mean ± std over {}", over.join(", ")) },
                    if excluded > 0 { format!(", {excluded} diverged or failed left out") } else { String::new() }
                );
                for c in &charts {
                    let _ = write!(
                        h,
                        "<figure class=\"plot axis-plot\" data-metric=\"{}\" data-axis=\"{}\">{}</figure>",
                        esc(&c.y_label),
                        esc(&c.x_label),
                        c.svg(440, 300)?
                    );
                }
                h.push_str("</div>");
            }
        }
        if !any_plot {
            h.push_str("<p class=\"muted\">Nothing to plot yet: plots need finished instances of a gathering stage whose matrix has an axis with two or more values.</p>");
        }
        h.push_str("</section>\n");

        // Instances, stage by stage.
        h.push_str("<section id=\"instances\"><h2>Instances</h2>");
        let figures_dir = self.figures_dir();
        for &si in &ex.stage_order {
            let s = &ex.pipeline.stages[si];
            let ids = &ex.by_stage[si];
            let _ = write!(
                h,
                "<details class=\"stage\" id=\"stage-{}\"{}><summary><h3>{} <span class=\"muted\">{} · {} instance{}</span></h3></summary>",
                esc(&s.name),
                if ids.len() <= 32 { " open" } else { "" },
                esc(&s.name),
                esc(&s.kind),
                ids.len(),
                if ids.len() == 1 { "" } else { "s" }
            );
            for &i in ids {
                let inst = &ex.instances[i];
                let st = &states[i];
                let _ = write!(
                    h,
                    "<article class=\"instance st-{0}\" id=\"i{i}\" data-kind=\"{1}\" data-status=\"{0}\"><h4>{2} <span class=\"badge st-{0}\">{0}</span></h4>",
                    st.name(),
                    esc(&inst.kind),
                    esc(&inst.label)
                );
                let key = &plan.items[i].key;
                let mut facts = format!("key <code>{}</code>", &key[..12.min(key.len())]);
                if let Some(m) = &manifests[i] {
                    let _ = write!(
                        facts,
                        " · {} · {} · finished {} UTC",
                        human_secs(m.timings.wall_s),
                        esc(&m.device),
                        utc(m.timings.finished)
                    );
                }
                let _ = write!(h, "<p class=\"facts\">{facts}</p>");
                if let Some(r) = st.reason() {
                    let _ = write!(h, "<p class=\"reason\">{}</p>", esc(r));
                }
                if let Some(m) = &manifests[i] {
                    if !m.metrics.is_empty() {
                        h.push_str("<table class=\"metrics\"><tbody>");
                        for (k, v) in &m.metrics {
                            let _ = write!(
                                h,
                                "<tr><th>{}</th><td>{}</td></tr>",
                                esc(k),
                                esc(&show_value(&AnyValue::Float64(*v)))
                            );
                        }
                        h.push_str("</tbody></table>");
                    }
                    let memo_key = (key.clone(), m.timings.finished.to_bits());
                    if !self.memo.contains_key(&memo_key) {
                        let dir = plan.cache.dir(&inst.kind, key);
                        let html = instance_figures(reg, m, &dir, &figures_dir, &safe[i])
                            .unwrap_or_else(|e| {
                                format!(
                                    "<p class=\"reason\">figures: {}</p>",
                                    esc(&format!("{e:#}"))
                                )
                            });
                        self.memo.insert(memo_key.clone(), html);
                    }
                    h.push_str(&self.memo[&memo_key]);
                }
                h.push_str("</article>");
            }
            h.push_str("</details>");
        }
        h.push_str("</section>\n</main>\n");
        let _ = write!(h, "<script>{SORT_JS}</script>\n</body>\n</html>\n");
        prune_figures(&figures_dir, &safe);
        Ok(h)
    }
}

/// Each instance's state from the scheduler's outcomes (during a run) or its manifest.
fn states(plan: &Plan, manifests: &[Option<Manifest>], snap: &Snapshot) -> Vec<State> {
    let ex = &plan.ex;
    let mut out: Vec<State> = Vec::with_capacity(ex.instances.len());
    for (i, m) in manifests.iter().enumerate() {
        let from_manifest = |cached: bool| match m {
            Some(m) => match m.status {
                Status::Ok if cached => State::Cached,
                Status::Ok => State::Ran,
                Status::Diverged => State::Diverged(String::new()),
                Status::Failed => State::Failed(m.error.clone().unwrap_or_else(|| "failed".into())),
            },
            None => State::Pending,
        };
        let st = match snap.outcomes.and_then(|o| o[i].as_ref()) {
            Some(RunOutcome::Cached) => from_manifest(true),
            Some(RunOutcome::Ran(_)) => from_manifest(false),
            Some(RunOutcome::Failed(e)) => State::Failed(e.clone()),
            Some(RunOutcome::Skipped) => State::Skipped(String::new()),
            Some(RunOutcome::Interrupted) => State::Interrupted,
            Some(RunOutcome::NotStarted) => State::Pending,
            None if snap.running.contains(&i) => State::Running,
            None if snap.outcomes.is_some() => State::Pending,
            None => from_manifest(true),
        };
        out.push(st);
    }
    // Reasons that name the instance upstream (instances come in dependency order).
    for i in 0..out.len() {
        let inst = &ex.instances[i];
        let upstream = |want: &dyn Fn(&State) -> bool| {
            inst.inputs
                .iter()
                .find(|&&u| want(&out[u]))
                .map(|&u| ex.instances[u].label.clone())
        };
        let reason = match &out[i] {
            State::Diverged(r) if r.is_empty() => Some(
                upstream(&|s| matches!(s, State::Diverged(_)))
                    .map(|u| format!("its input {u} diverged"))
                    .or_else(|| {
                        manifests[i].as_ref().and_then(|m| {
                            m.info
                                .iter()
                                .find(|(k, _)| k.contains("diverged"))
                                .map(|(k, v)| format!("non-finite values ({k} = {v})"))
                        })
                    })
                    .unwrap_or_else(|| "non-finite values".into()),
            ),
            State::Skipped(r) if r.is_empty() => Some(
                upstream(&|s| matches!(s, State::Failed(_) | State::Skipped(_)))
                    .map(|u| format!("not run: its input {u} failed or was skipped"))
                    .unwrap_or_else(|| "not run: an input failed".into()),
            ),
            _ => None,
        };
        match (reason, &mut out[i]) {
            (Some(r), State::Diverged(x)) | (Some(r), State::Skipped(x)) => *x = r,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
