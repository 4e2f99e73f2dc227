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
//!   ([`Stage::figures`]): this module knows no stage kind by name.
//!
//! `ablate run` rewrites the page as instances finish through [`Reporter::observe`],
//! rate-limited; `ablate report` writes it once from the cache.

use super::plots::{Chart, LineChart, Series, XAxis};
use super::query::pipeline_tables;
use super::table::{json_value, show_value};
use crate::engine::{Figure, FigureCtx, Manifest, Plan, Registry, RunEvent, RunOutcome, Status};
use crate::pipeline::short_value;
use crate::util::atomic_write;
use anyhow::{Context, Result};
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

/// The figures of one finished instance: its kind's figures, with picture files
/// copied to `figures/<safe label>/`; other PNGs it wrote are linked.
fn instance_figures(
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

fn copy_if_changed(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    if std::fs::read(dst).ok().as_deref() != Some(&bytes[..]) {
        atomic_write(dst, &bytes)?;
    }
    Ok(())
}

/// Remove figure folders of instances the pipeline no longer has.
fn prune_figures(figures_dir: &Path, safe: &[String]) {
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

/// One gathered instance: its matrix values (as short labels) and metrics.
#[derive(Debug, Clone)]
pub struct Obs {
    pub vars: Vec<(String, String)>,
    pub metrics: BTreeMap<String, f64>,
}

/// Mean and sample standard deviation (n - 1; NaN for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    (mean, std)
}

/// For every metric and every matrix axis with two or more values (not averaged
/// over): the metric's mean against the axis's values, one line per combination of
/// the other axes, error bars (± std) over the `over` axes.
pub fn axis_charts(obs: &[Obs], over: &[String]) -> Vec<LineChart> {
    let mut axes: Vec<String> = vec![];
    let mut values: HashMap<String, Vec<String>> = HashMap::new();
    for o in obs {
        for (k, v) in &o.vars {
            if over.contains(k) {
                continue;
            }
            if !axes.contains(k) {
                axes.push(k.clone());
            }
            let vs = values.entry(k.clone()).or_default();
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    let metrics: BTreeSet<&String> = obs.iter().flat_map(|o| o.metrics.keys()).collect();
    // Timings (`eval_s`, `samples_per_s`) after the results.
    let mut metrics: Vec<&String> = metrics.into_iter().collect();
    metrics.sort_by_key(|m| (m.ends_with("_s"), m.as_str()));
    let get = |o: &Obs, axis: &str| {
        o.vars
            .iter()
            .find(|(k, _)| k == axis)
            .map(|(_, v)| v.clone())
    };
    let mut out = vec![];
    for m in metrics {
        for axis in axes.iter().filter(|a| values[*a].len() >= 2) {
            let cats = &values[axis];
            let others: Vec<&String> = axes.iter().filter(|a| *a != axis).collect();
            // Lines: combinations of the other axes, in order of first appearance.
            let mut lines: Vec<Vec<Option<String>>> = vec![];
            let mut cells: HashMap<(Vec<Option<String>>, usize), Vec<f64>> = HashMap::new();
            for o in obs {
                let Some(v) = o.metrics.get(m).copied().filter(|v| v.is_finite()) else {
                    continue;
                };
                let Some(x) = get(o, axis).and_then(|c| cats.iter().position(|d| *d == c)) else {
                    continue;
                };
                let line: Vec<Option<String>> = others.iter().map(|a| get(o, a)).collect();
                if !lines.contains(&line) {
                    lines.push(line.clone());
                }
                cells.entry((line, x)).or_default().push(v);
            }
            if lines.is_empty() {
                continue;
            }
            let series = lines
                .iter()
                .map(|line| {
                    let mut points = vec![];
                    let mut err = vec![];
                    for x in 0..cats.len() {
                        if let Some(v) = cells.get(&(line.clone(), x)) {
                            let (mean, std) = mean_std(v);
                            points.push((x as f64, mean));
                            err.push(if std.is_finite() { std } else { 0.0 });
                        }
                    }
                    let name = others
                        .iter()
                        .zip(line)
                        .filter_map(|(a, v)| v.as_ref().map(|v| format!("{a}={v}")))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let name = if name.is_empty() {
                        if over.is_empty() {
                            m.clone()
                        } else {
                            format!("mean ± std over {}", over.join(", "))
                        }
                    } else {
                        name
                    };
                    Series { name, points, err }
                })
                .collect();
            out.push(LineChart {
                title: format!("{m} by {axis}"),
                x_label: axis.clone(),
                y_label: m.clone(),
                x: XAxis::Categories(cats.clone()),
                series,
                markers: true,
            });
        }
    }
    out
}

/// The stage graph as SVG (layered left to right) and a table of per-stage counts.
fn stage_graph(plan: &Plan, states: &[State]) -> String {
    let ex = &plan.ex;
    let stages = &ex.pipeline.stages;
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut layer = vec![0usize; stages.len()];
    for &si in &ex.stage_order {
        for need in &stages[si].needs {
            if let Some(&u) = index.get(need.as_str()) {
                layer[si] = layer[si].max(layer[u] + 1);
            }
        }
    }
    let mut row_of = vec![0usize; stages.len()];
    let mut rows_in: BTreeMap<usize, usize> = BTreeMap::new();
    for &si in &ex.stage_order {
        let r = rows_in.entry(layer[si]).or_default();
        row_of[si] = *r;
        *r += 1;
    }
    let counts: Vec<BTreeMap<&'static str, usize>> = (0..stages.len())
        .map(|si| {
            let mut c = BTreeMap::new();
            for &i in &ex.by_stage[si] {
                *c.entry(states[i].name()).or_default() += 1;
            }
            c
        })
        .collect();
    let (bw, bh, gx, gy, pad) = (200.0, 66.0, 56.0, 16.0, 12.0);
    let width = pad * 2.0 + (layer.iter().max().copied().unwrap_or(0) + 1) as f64 * (bw + gx) - gx;
    let height = pad * 2.0 + rows_in.values().max().copied().unwrap_or(1) as f64 * (bh + gy) - gy;
    let pos = |si: usize| {
        (
            pad + layer[si] as f64 * (bw + gx),
            pad + row_of[si] as f64 * (bh + gy),
        )
    };
    let mut s = format!(
        "<section id=\"stages\"><h2>Stages</h2><svg class=\"dag\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"stage graph\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#666\"/></marker></defs>"
    );
    for (si, st) in stages.iter().enumerate() {
        for need in &st.needs {
            if let Some(&u) = index.get(need.as_str()) {
                let (ux, uy) = pos(u);
                let (vx, vy) = pos(si);
                let (x1, y1, x2, y2) = (ux + bw, uy + bh / 2.0, vx, vy + bh / 2.0);
                let mx = (x1 + x2) / 2.0;
                let _ = write!(
                    s,
                    "<path d=\"M{x1},{y1} C{mx},{y1} {mx},{y2} {x2},{y2}\" fill=\"none\" stroke=\"#666\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>"
                );
            }
        }
    }
    for (si, st) in stages.iter().enumerate() {
        let (x, y) = pos(si);
        let c = &counts[si];
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        let class = if get("failed") > 0 {
            "failed"
        } else if get("diverged") > 0 {
            "diverged"
        } else if get("running") > 0 {
            "running"
        } else if get("pending") + get("skipped") + get("interrupted") == 0 {
            "done"
        } else {
            "pending"
        };
        let line = c
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(" · ");
        let _ = write!(
            s,
            "<g class=\"node n-{class}\"><rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" rx=\"6\"/>\
             <text x=\"{}\" y=\"{}\" class=\"n1\"><a href=\"#stage-{}\">{}</a></text>\
             <text x=\"{}\" y=\"{}\" class=\"n2\">{} · {} instance{}</text>\
             <text x=\"{}\" y=\"{}\" class=\"n3\">{}</text></g>",
            x + 10.0,
            y + 20.0,
            esc(&st.name),
            esc(&st.name),
            x + 10.0,
            y + 38.0,
            esc(&st.kind),
            ex.by_stage[si].len(),
            if ex.by_stage[si].len() == 1 { "" } else { "s" },
            x + 10.0,
            y + 56.0,
            esc(&line)
        );
    }
    s.push_str("</svg>");
    let cols = [
        "cached",
        "ran",
        "running",
        "pending",
        "diverged",
        "failed",
        "skipped",
        "interrupted",
    ];
    s.push_str("<table class=\"data sortable counts\" data-table=\"stage counts\"><thead><tr><th>stage</th><th>kind</th><th>needs</th><th>instances</th>");
    for c in cols {
        let _ = write!(s, "<th>{c}</th>");
    }
    s.push_str("</tr></thead><tbody>");
    for &si in &ex.stage_order {
        let st = &stages[si];
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td data-v=\"{}\" class=\"num\">{}</td>",
            esc(&st.name),
            esc(&st.kind),
            esc(&st.needs.join(", ")),
            ex.by_stage[si].len(),
            ex.by_stage[si].len()
        );
        for c in cols {
            let v = counts[si].get(c).copied().unwrap_or(0);
            let _ = write!(
                s,
                "<td data-v=\"{v}\" class=\"num {}\">{v}</td>",
                if v > 0 {
                    format!("st-{c}")
                } else {
                    "zero".into()
                }
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></section>\n");
    s
}

/// A table as sortable HTML. `<m>_mean` / `<m>_std` pairs become one `m` column
/// showing mean ± std; columns of upstream stages (`train.wall_s`), the cache key and
/// columns with one value in every row are hidden until "all columns" is ticked.
fn table_html(name: &str, df: &DataFrame, stages: &BTreeSet<&str>) -> String {
    let cols: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let rows = df.height();
    struct Col {
        header: String,
        mean: usize,
        std: Option<usize>,
        hidden: bool,
    }
    let upstream = |c: &str| {
        c.split_once('.')
            .is_some_and(|(pre, _)| stages.contains(pre))
    };
    let constant = |i: usize| {
        rows > 1
            && df.columns()[i]
                .as_materialized_series()
                .n_unique()
                .is_ok_and(|u| u <= 1)
    };
    let mut shown: Vec<Col> = vec![];
    for (i, c) in cols.iter().enumerate() {
        if let Some(base) = c.strip_suffix("_std") {
            if cols.iter().any(|d| d.strip_suffix("_mean") == Some(base)) {
                continue;
            }
        }
        let (header, std) = match c.strip_suffix("_mean") {
            Some(base) => match cols
                .iter()
                .position(|d| d.strip_suffix("_std") == Some(base))
            {
                Some(j) => (format!("{base} (mean ± std)"), Some(j)),
                None => (c.clone(), None),
            },
            None => (c.clone(), None),
        };
        let keep = ["instance", "status"].contains(&c.as_str());
        let hidden = !keep && (c == "key" || c == "pipeline" || upstream(c) || constant(i));
        shown.push(Col {
            header,
            mean: i,
            std,
            hidden,
        });
    }
    let hidden_n = shown.iter().filter(|c| c.hidden).count();
    let mut h = format!(
        "<div class=\"tbl\"><h3 id=\"t-{0}\">{0} <span class=\"muted\">{rows} row{1}</span></h3>",
        esc(name),
        if rows == 1 { "" } else { "s" }
    );
    if hidden_n > 0 {
        let _ = write!(
            h,
            "<label class=\"toggle\"><input type=\"checkbox\" class=\"allcols\"> all columns ({hidden_n} more: upstream stages, the key, and columns with one value in every row)</label>"
        );
    }
    let _ = write!(
        h,
        "<div class=\"scroll\"><table class=\"data sortable\" data-table=\"{}\"><thead><tr>",
        esc(name)
    );
    for c in &shown {
        let _ = write!(
            h,
            "<th{} title=\"sort\">{}</th>",
            if c.hidden { " class=\"x\"" } else { "" },
            esc(&c.header)
        );
    }
    h.push_str("</tr></thead><tbody>");
    let columns = df.columns();
    for r in 0..rows {
        h.push_str("<tr>");
        for c in &shown {
            let v = columns[c.mean].get(r).unwrap_or(AnyValue::Null);
            let sort = match json_value(&v) {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => String::new(),
                other => other
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| other.to_string()),
            };
            let mut text = show_value(&v);
            if let Some(j) = c.std {
                let s = columns[j].get(r).unwrap_or(AnyValue::Null);
                let s = show_value(&s);
                if !s.is_empty() && !text.is_empty() {
                    text = format!("{text} ± {s}");
                }
            }
            let mut class = vec![];
            if matches!(
                v,
                AnyValue::Float64(_)
                    | AnyValue::Float32(_)
                    | AnyValue::Int64(_)
                    | AnyValue::Int32(_)
                    | AnyValue::UInt32(_)
                    | AnyValue::UInt64(_)
            ) {
                class.push("num".to_string());
            }
            if c.hidden {
                class.push("x".to_string());
            }
            if cols[c.mean] == "status" && text != "ok" {
                class.push(format!("st-{}", esc(&text)));
            }
            let _ = write!(
                h,
                "<td data-v=\"{}\"{}>{}</td>",
                esc(&sort),
                if class.is_empty() {
                    String::new()
                } else {
                    format!(" class=\"{}\"", class.join(" "))
                },
                esc(&text)
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div></div>");
    h
}

/// HTML text and attribute escaping.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: f64) -> String {
    let t = secs.max(0.0).floor() as i64;
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

/// First in `<head>`: every script error, console error and failed picture load is
/// recorded in `<html data-errors>` (the end-to-end test reads it from the DOM).
const ERROR_LOG_JS: &str = r#"(function(){var errs=[];function rec(m){errs.push(String(m));document.documentElement.setAttribute('data-errors',errs.join(' | '));}
window.addEventListener('error',function(e){var t=e.target;if(t&&t!==window&&(t.src||t.href)){rec('failed to load '+(t.src||t.href));}else{rec(e.message||'error');}},true);
window.addEventListener('unhandledrejection',function(e){rec('unhandled rejection: '+e.reason);});
var ce=console.error;console.error=function(){rec(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();"#;

/// Last in `<body>`: click a header to sort (numbers as numbers, again to reverse);
/// "all columns" shows hidden ones; on load, count the pictures that decoded.
const SORT_JS: &str = r#"(function(){
function key(td){var v=td.getAttribute('data-v');return v===null?td.textContent:v;}
function sortBy(table,i,th){var asc=th.getAttribute('aria-sort')!=='ascending';
table.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');
var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
if(x===''&&y!=='')return 1;if(y===''&&x!=='')return -1;
var nx=parseFloat(x),ny=parseFloat(y);var c=(!isNaN(nx)&&!isNaN(ny)&&isFinite(x)&&isFinite(y))?nx-ny:x.localeCompare(y);
return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});}
document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){sortBy(t,i,th);});});});
document.querySelectorAll('input.allcols').forEach(function(cb){cb.addEventListener('change',function(){
cb.closest('.tbl').classList.toggle('all',cb.checked);});});
window.addEventListener('load',function(){var ok=0,bad=0;
Array.prototype.forEach.call(document.images,function(im){if(im.complete&&im.naturalWidth>0){ok++;}else{bad++;}});
var d=document.documentElement;d.setAttribute('data-images-ok',ok);d.setAttribute('data-images-bad',bad);d.setAttribute('data-ready','1');});
})();"#;

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#fff;border-bottom:1px solid #ddd;padding:14px 24px}
h1{margin:0 0 4px;font-size:24px}h2{margin:28px 0 10px;font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:16px 0 6px;display:inline-block}h4{margin:0 0 4px;font-size:14px;word-break:break-all}
main{padding:0 24px 40px}.desc{max-width:80em;margin:4px 0 8px}.muted{color:#777;font-weight:normal}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}dl.meta dt{color:#666}dl.meta dd{margin:0}
nav a{margin-right:14px}code{background:#f0f0f0;padding:1px 4px;border-radius:3px}
.scroll{overflow-x:auto;max-width:100%}
table.data{border-collapse:collapse;background:#fff;margin:4px 0 12px;font-variant-numeric:tabular-nums}
table.data th,table.data td{border:1px solid #ddd;padding:3px 8px;text-align:left;white-space:nowrap}
table.data td.num{text-align:right}
table.data th{background:#f3f3f3;cursor:pointer;user-select:none}
table.data th[aria-sort=ascending]::after{content:" ▲"}table.data th[aria-sort=descending]::after{content:" ▼"}
.tbl:not(.all) .x{display:none}.toggle{margin-left:12px;color:#555;font-size:13px}
td.zero{color:#bbb}
.st-failed,td.st-failed{color:#b00020}.st-diverged,td.st-diverged{color:#b35900}.st-skipped,.st-interrupted{color:#777}
.st-running{color:#0b62a4}
.badge{display:inline-block;border-radius:9px;padding:0 8px;font-size:12px;font-weight:normal;border:1px solid currentColor}
.badge.st-cached,.badge.st-ran{color:#2e7d32}.badge.st-pending{color:#888}
ul.problems li{margin:3px 0}
svg{max-width:100%;height:auto}
svg.dag .node rect{fill:#f3f3f3;stroke:#999}svg.dag .n-done rect{fill:#e8f5e9;stroke:#2e7d32}
svg.dag .n-failed rect{fill:#fdecea;stroke:#b00020}svg.dag .n-diverged rect{fill:#fff4e5;stroke:#b35900}
svg.dag .n-running rect{fill:#e3f2fd;stroke:#0b62a4}
svg.dag text{font:12px sans-serif;fill:#333}svg.dag .n1{font-weight:bold;font-size:13px}svg.dag .n3{fill:#555}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:4px}
figure.picture img{display:block;max-width:512px;image-rendering:pixelated;min-width:200px}
figcaption{font-size:12px;color:#555;padding:2px}
details.stage{margin:8px 0}details.stage>summary{cursor:pointer}
article.instance{background:#fff;border:1px solid #e3e3e3;border-left:4px solid #9e9e9e;margin:8px 0;padding:8px 12px}
article.st-cached,article.st-ran{border-left-color:#2e7d32}article.st-failed{border-left-color:#b00020}
article.st-diverged{border-left-color:#b35900}article.st-running{border-left-color:#0b62a4}
.facts{margin:0 0 6px;color:#555;font-size:12px}.reason{color:#b00020;white-space:pre-wrap;margin:4px 0}
article.st-diverged .reason{color:#b35900}
table.metrics{border-collapse:collapse;font-size:12px;margin:4px 0 8px;float:right;margin-left:12px}
table.metrics th{text-align:left;font-weight:normal;color:#555;padding:0 8px 0 0}table.metrics td{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:8px;clear:none}.files{font-size:12px;clear:both}
article.instance::after{content:"";display:block;clear:both}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(objective: &str, seed: i64, modes: f64) -> Obs {
        Obs {
            vars: vec![
                ("objective".into(), objective.into()),
                ("seed".into(), seed.to_string()),
            ],
            metrics: [("modes".to_string(), modes)].into_iter().collect(),
        }
    }

    #[test]
    fn axis_charts_average_over_seeds_with_sample_std() {
        // rpgan: 8, 6 -> mean 7, std sqrt(((1)^2 + (1)^2) / 1) = sqrt(2)
        // ns:    5, 5, 8 -> mean 6, std sqrt((1 + 1 + 4) / 2) = sqrt(3)
        let o = vec![
            obs("rpgan", 0, 8.0),
            obs("ns", 0, 5.0),
            obs("rpgan", 1, 6.0),
            obs("ns", 1, 5.0),
            obs("ns", 2, 8.0),
        ];
        let c = axis_charts(&o, &["seed".to_string()]);
        assert_eq!(c.len(), 1, "one metric x one axis (seed is averaged over)");
        let c = &c[0];
        assert_eq!(c.x, XAxis::Categories(vec!["rpgan".into(), "ns".into()]));
        assert_eq!(
            (c.x_label.as_str(), c.y_label.as_str()),
            ("objective", "modes")
        );
        assert_eq!(c.series.len(), 1);
        let s = &c.series[0];
        assert_eq!(s.name, "mean ± std over seed");
        assert_eq!(s.points, vec![(0.0, 7.0), (1.0, 6.0)]);
        assert!((s.err[0] - 2f64.sqrt()).abs() < 1e-12);
        assert!((s.err[1] - 3f64.sqrt()).abs() < 1e-12);

        // Without averaging, seed is an axis too: modes by objective has one line per
        // seed, modes by seed one line per objective.
        let c = axis_charts(&o, &[]);
        assert_eq!(c.len(), 2);
        let by_obj = c.iter().find(|c| c.x_label == "objective").unwrap();
        let names: Vec<&str> = by_obj.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["seed=0", "seed=1", "seed=2"]);
        // seed=2 only has ns (x = 1).
        assert_eq!(by_obj.series[2].points, vec![(1.0, 8.0)]);
        assert_eq!(by_obj.series[2].err, vec![0.0]);
        let by_seed = c.iter().find(|c| c.x_label == "seed").unwrap();
        assert_eq!(by_seed.series[0].name, "objective=rpgan");
        assert_eq!(by_seed.series[0].points, vec![(0.0, 8.0), (1.0, 6.0)]);
    }

    #[test]
    fn no_axis_with_two_values_means_no_chart() {
        let o = vec![obs("rpgan", 0, 1.0), obs("rpgan", 1, 2.0)];
        assert!(axis_charts(&o, &["seed".to_string()]).is_empty());
        // Non-finite metric values are left out of the means.
        let o = vec![obs("a", 0, f64::NAN), obs("b", 0, 2.0), obs("a", 1, 4.0)];
        let c = axis_charts(&o, &["seed".to_string()]);
        assert_eq!(c[0].series[0].points, vec![(0.0, 4.0), (1.0, 2.0)]);
    }

    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00");
        // `date -u -d @1700000000`: Tue Nov 14 22:13:20 UTC 2023.
        assert_eq!(utc(1_700_000_000.0), "2023-11-14 22:13:20");
        // A leap day: `date -u -d @951782400` is 2000-02-29 00:00:00.
        assert_eq!(utc(951_782_400.5), "2000-02-29 00:00:00");
    }

    #[test]
    fn safe_names_are_readable_distinct_and_file_safe() {
        let n = safe_names(
            [
                "train_ring[objective=rpgan-r1+r2,seed=0]",
                "x[a=b/c]",
                "x[a=b?c]",
                "..",
            ]
            .into_iter(),
        );
        assert_eq!(n[0], "train_ring@objective=rpgan-r1+r2,seed=0");
        assert_eq!(n[1], "x@a=b_c");
        assert_eq!(n[2], "x@a=b_c~2");
        assert_eq!(n[3], "_..");
        let long = "s[".to_string() + &"a".repeat(300) + "]";
        let l = &safe_names([long.as_str()].into_iter())[0];
        assert!(l.len() < 130 && l.starts_with("s@aaa"));
    }

    #[test]
    fn table_html_pairs_mean_and_std_and_hides_upstream_columns() {
        use crate::results::table::{frame_from_rows, Cell};
        let df = frame_from_rows(&[
            vec![
                ("pipeline".into(), Cell::Str("p".into())),
                ("objective.loss".into(), Cell::Str("ns".into())),
                ("n".into(), Cell::Int(2)),
                ("modes_mean".into(), Cell::Float(7.5)),
                ("modes_std".into(), Cell::Float(0.5)),
                ("train.wall_s_mean".into(), Cell::Float(3.0)),
                ("status".into(), Cell::Str("ok".into())),
            ],
            vec![
                ("pipeline".into(), Cell::Str("p".into())),
                ("objective.loss".into(), Cell::Str("rpgan".into())),
                ("n".into(), Cell::Int(2)),
                ("modes_mean".into(), Cell::Float(8.0)),
                ("modes_std".into(), Cell::Null),
                ("train.wall_s_mean".into(), Cell::Float(4.0)),
                ("status".into(), Cell::Str("diverged".into())),
            ],
        ])
        .unwrap();
        let stages: BTreeSet<&str> = ["train", "table"].into_iter().collect();
        let h = table_html("table_agg", &df, &stages);
        assert!(
            h.contains("<th title=\"sort\">modes (mean ± std)</th>"),
            "{h}"
        );
        assert!(!h.contains(">modes_std<"), "{h}");
        assert!(
            h.contains("<td data-v=\"7.5\" class=\"num\">7.5 ± 0.5</td>"),
            "{h}"
        );
        // A missing std shows the mean alone.
        assert!(h.contains("<td data-v=\"8.0\" class=\"num\">8</td>"), "{h}");
        // Upstream, constant (`pipeline`, `n`) columns are hidden; status is kept and marked.
        assert!(
            h.contains("<th class=\"x\" title=\"sort\">train.wall_s_mean</th>"),
            "{h}"
        );
        assert!(
            h.contains("<th class=\"x\" title=\"sort\">pipeline</th>"),
            "{h}"
        );
        assert!(h.contains("<th class=\"x\" title=\"sort\">n</th>"), "{h}");
        assert!(h.contains("class=\"st-diverged\">diverged</td>"), "{h}");
        assert!(h.contains("3 more"), "{h}");
    }

    #[test]
    fn rewrites_are_rate_limited() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Reporter {
            out: d.path().join("r.html"),
            command: String::new(),
            device: String::new(),
            memo: HashMap::new(),
            last: None,
            last_cost: Duration::ZERO,
            pending: false,
            min_interval: Duration::from_secs(2),
        };
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        // The first event always writes.
        assert!(r.due(false, t0));
        r.last = Some(t0);
        // A thousand instances finishing within one second: no rewrite yet...
        assert!((0..1000).all(|i| !r.due(true, ms(i))));
        // ...but the next tick after the interval writes what was deferred.
        assert!(r.due(false, ms(2000)));
        r.last = Some(ms(2000));
        r.pending = false;
        // Nothing new: ticks do not rewrite.
        assert!(!r.due(false, ms(9000)));
        // A slow write (300 ms) stretches the interval to 3 s.
        r.last_cost = Duration::from_millis(300);
        assert!(!r.due(true, ms(4500)));
        assert!(r.due(false, ms(5000)));
    }

    #[test]
    fn esc_escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
