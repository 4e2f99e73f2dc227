//! The command line: argument parsing, the one place that prints, and exit codes
//! (0 success, 1 some instance failed, 2 invalid pipeline / query / usage,
//! 130 interrupted). Kept in the library so tests and embedders can run it with a
//! registry of their own stage kinds.
//!
//! Here: the arguments (`Cli`, `Cmd`) and `dispatch`, one arm per command. How tables,
//! plans and frames are printed is in `cli/print.rs`; `ablate gc` and `ablate verify`
//! each have a file.

use crate::engine::{
    self, Cache, DeviceChoice, ExecutorChoice, Plan, PlanOptions, Registry, RunOptions, RunOutcome,
    SlurmOptions,
};
use crate::pipeline::{Pipeline, SpecError};
use crate::results::query;
use crate::results::report::{Reporter, Snapshot};
use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

mod gc;
mod print;
mod verify;

pub use print::human_bytes;
use print::{current_tables, print_frame, print_plan, print_tables};

const ABOUT: &str = "Declarative, cached, parallel GAN ablation pipelines.

A pipeline YAML names stages (data, judge, train, sample, evaluate, tabulate), what
each needs, its params, and a matrix of what to compare. `ablate run` expands it into
a DAG of stage instances, skips everything already in the cache, runs the rest in
parallel and writes one table per tabulate stage under results/<pipeline>/.";

const AFTER: &str = "Examples:
  ablate plan pipelines/quickstart.yaml          what would run, and why
  ablate run pipelines/quickstart.yaml -j 2      run it (cached work is skipped)
  ablate run pipelines/quickstart.yaml --force train   redo train and everything after it
  ablate run study.yaml --executor slurm         each ready instance as a Slurm job (shared cache)
  ablate query 'SELECT * FROM ring_table_agg' -p pipelines/quickstart.yaml
  ablate report pipelines/quickstart.yaml        results/quickstart/report.html (ablate run keeps it current)
  ablate dag pipelines/r3gan-roadmap.yaml --format dot | dot -Tsvg > dag.svg
  ablate gc pipelines/*.yaml                     drop cache entries no pipeline uses
  ablate gc --stale                              drop entries older stage versions left behind
  ablate verify pipelines/quickstart.yaml        re-hash its cached outputs (exit 1 if any changed)

Exit codes: 0 ok, 1 an instance failed, 2 invalid pipeline/query/usage, 130 interrupted.";

#[derive(Parser, Debug)]
#[command(name = "ablate", version, about = "Declarative, cached, parallel GAN ablation pipelines", long_about = ABOUT, after_help = AFTER)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors; no progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Cache root (one directory per stage instance).
    #[arg(
        long,
        global = true,
        env = "ABLATE_CACHE",
        default_value = "results/cache"
    )]
    cache_dir: PathBuf,
    /// Where tabulate publishes `<pipeline>/<stage>.{parquet,csv,md}`.
    #[arg(long, global = true, env = "ABLATE_RESULTS", default_value = "results")]
    results_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a pipeline: everything not cached, in parallel, then publish its tables.
    Run {
        /// The pipeline YAML file.
        file: PathBuf,
        /// Instances run at once (default: number of cores; local executor).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Threads of each running instance (default: the cores shared among the jobs, so
        /// jobs x threads <= cores); a stage's `resources: {cpus: N}` overrides it.
        #[arg(short = 't', long, value_parser = clap::value_parser!(u64).range(1..))]
        threads: Option<u64>,
        /// Re-run this stage and everything downstream of it (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// After a failure, still finish every branch that does not depend on it.
        #[arg(short, long)]
        keep_going: bool,
        /// Where stages that can use a GPU run: cpu, cuda, or auto (cuda when built with it and present).
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceChoice,
        /// Do not write results/<pipeline>/report.html while running.
        #[arg(long)]
        no_report: bool,
        /// Where instances are computed: `local` (threads here) or `slurm` (one sbatch job
        /// per instance, on nodes that share the cache directory and this binary's path).
        #[arg(long, value_enum, env = "ABLATE_EXECUTOR", default_value = "local")]
        executor: ExecutorArg,
        /// With `--executor slurm`: jobs in flight at once (the cluster's submit limit).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
        max_jobs: u64,
        /// With `--executor slurm`: seconds between two `squeue` polls.
        #[arg(
            long,
            env = "ABLATE_SLURM_POLL",
            default_value_t = 5.0,
            value_name = "SECONDS"
        )]
        slurm_poll: f64,
        /// With `--executor slurm`: the ablate binary the nodes run (default: this one,
        /// which must then exist at the same path on the nodes).
        #[arg(long, env = "ABLATE_SLURM_BINARY", value_name = "PATH")]
        slurm_binary: Option<PathBuf>,
    },
    /// Compute one instance from its frozen spec in the cache (what a Slurm job runs).
    #[command(hide = true)]
    Exec {
        /// Its stage kind.
        kind: String,
        /// Its key.
        key: String,
    },
    /// Dry run: every instance, its key, and whether it is cached or will run (and why).
    Plan {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
        /// Plan as if this stage were forced (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
    },
    /// Print the stage graph (with instance counts) as text or Graphviz DOT.
    Dag {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: DagFormat,
    },
    /// SQL (polars) over the results tables; tables are named by tabulate stage.
    Query {
        /// e.g. 'SELECT "objective.loss", avg(modes) FROM "table" GROUP BY 1' (quote dotted
        /// names, and `table`, an SQL keyword)
        sql: String,
        /// Only this pipeline's tables (without it: every pipeline's, stacked, with a `pipeline` column).
        #[arg(short, long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutFormat,
    },
    /// Write the pipeline's HTML report (tables, plots, sample grids; opens from disk).
    Report {
        file: PathBuf,
        /// Where to write it (default results/<pipeline>/report.html); pictures go to
        /// figures/ beside it.
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Print a pipeline's result tables.
    Show {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: OutFormat,
        /// Every column (by default upstream stages' columns and columns with one value
        /// in every row are left out; `ablate query` sees them all).
        #[arg(long)]
        all: bool,
    },
    /// Remove cache entries that none of the given pipelines reference, or (--stale)
    /// those that older versions of their stages left behind.
    Gc {
        /// Every pipeline whose cache entries must be kept.
        #[arg(required_unless_present = "stale")]
        files: Vec<PathBuf>,
        /// Remove, whatever the pipelines, the entries written by an older version of
        /// their stage than this ablate's (after an upgrade that changed a computation,
        /// nothing can use them again) and every entry computed from one.
        #[arg(long, conflicts_with = "files")]
        stale: bool,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash (blake3) the outputs of finished instances against their manifests, as
    /// `dvc status` does: the pipelines' instances, or the whole cache without FILE.
    /// Exit 1 when any output changed. (Every plan already checks sizes and times.)
    Verify {
        /// Pipelines whose instances to check (default: every instance in the cache).
        files: Vec<PathBuf>,
        /// Remove the damaged instances from the cache, so the next run recomputes them.
        #[arg(long)]
        drop: bool,
    },
    /// List the stage kinds this build knows.
    Kinds,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum PlanFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum DagFormat {
    Text,
    Dot,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum OutFormat {
    Table,
    Csv,
    Json,
    Markdown,
}

/// An error with its exit code.
struct Exit(i32, String);

impl From<SpecError> for Exit {
    fn from(e: SpecError) -> Self {
        Exit(2, e.to_string())
    }
}

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Self {
        Exit(1, format!("{e:#}"))
    }
}

/// Parse the process arguments and run; returns the exit code.
pub fn main(reg: Registry) -> i32 {
    run_with(std::env::args_os(), reg)
}

/// Run the command line on explicit arguments with a given stage registry.
pub fn run_with<I, T>(args: I, reg: Registry) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    crate::logging::init(cli.verbose, cli.quiet);
    match dispatch(&cli, &reg) {
        Ok(code) => code,
        Err(Exit(code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn dispatch(cli: &Cli, reg: &Registry) -> Result<i32, Exit> {
    let cache = Cache::new(&cli.cache_dir);
    match &cli.cmd {
        Cmd::Plan {
            file,
            format,
            force,
        } => {
            let plan = plan_with_force(file, reg, cache.clone(), force)?;
            match format {
                PlanFormat::Json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&plan.rows()).map_err(anyhow::Error::from)?
                    );
                }
                PlanFormat::Text => print_plan(&plan),
            }
            Ok(0)
        }
        Cmd::Dag { file, format } => {
            let (ex, _) = engine::plan::load(file, reg, &cwd())?;
            match format {
                DagFormat::Text => print!("{}", ex.dag_text()),
                DagFormat::Dot => print!("{}", ex.dag_dot()),
            }
            Ok(0)
        }
        Cmd::Run {
            file,
            jobs,
            threads,
            force,
            keep_going,
            device,
            no_report,
            executor,
            max_jobs,
            slurm_poll,
            slurm_binary,
        } => {
            let plan = plan_with_force(file, reg, cache.clone(), force)?;
            let (cached, to_run) = plan.counts();
            tracing::info!(
                "{}: {} instances, {cached} cached, {to_run} to run",
                plan.ex.pipeline.name,
                plan.items.len()
            );
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            let progress =
                !cli.quiet && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
            let opts = RunOptions {
                jobs,
                keep_going: *keep_going,
                device: *device,
                results_root: cli.results_dir.clone(),
                progress,
                threads: threads.map(|t| t as usize),
                executor: match executor {
                    ExecutorArg::Local => ExecutorChoice::Local,
                    ExecutorArg::Slurm => {
                        if !(slurm_poll.is_finite() && *slurm_poll > 0.0) {
                            return Err(Exit(2, format!("--slurm-poll {slurm_poll}: must be > 0")));
                        }
                        let mut so = SlurmOptions {
                            max_jobs: *max_jobs as usize,
                            poll: std::time::Duration::from_secs_f64(*slurm_poll),
                            ..Default::default()
                        };
                        if let Some(b) = slurm_binary {
                            so.binary = b.clone();
                        }
                        ExecutorChoice::Slurm(so)
                    }
                },
            };
            let cancel = install_ctrlc();
            let device_name = format!("{device:?}").to_lowercase();
            let mut reporter = (!no_report).then(|| {
                Reporter::new(
                    &plan,
                    &cli.results_dir,
                    None,
                    reproduce_command(file, force),
                    device_name,
                )
            });
            let s = engine::run_observed(&plan, reg, &opts, cancel, &mut |ev| {
                if let Some(r) = reporter.as_mut() {
                    r.observe(&plan, reg, &cli.results_dir, ev);
                }
            })?;
            if let Some(r) = reporter.as_mut() {
                let snap = Snapshot {
                    outcomes: Some(&s.outcomes.iter().cloned().map(Some).collect::<Vec<_>>()),
                    running: &[],
                };
                match r.write(&plan, reg, &cli.results_dir, &snap) {
                    Ok(p) => eprintln!("report: {}", p.display()),
                    Err(e) => tracing::warn!("report {}: {e:#}", r.path().display()),
                }
            }
            for (label, err) in &s.failures {
                eprintln!("failed: {label}\n  {}", err.replace('\n', "\n  "));
            }
            eprintln!("{}: {}", plan.ex.pipeline.name, s.line());
            let results = plan.results_dir(&cli.results_dir);
            if results.exists() && s.ok() {
                // The study's answer, where the user is looking (stdout), then where it lives.
                if !cli.quiet {
                    print_tables(&plan.ex.pipeline, &results, OutFormat::Table, false)?;
                }
                eprintln!("tables: {} (ablate show / ablate query)", results.display());
            }
            if to_run > 0 {
                gc::hint_stale(&cache, reg);
            }
            Ok(if s.interrupted > 0 {
                130
            } else if s.ok() {
                0
            } else {
                1
            })
        }
        Cmd::Query {
            sql,
            pipeline,
            format,
        } => {
            let tables = match pipeline {
                Some(f) => {
                    let p = Pipeline::load(f)?;
                    current_tables(&p, &cli.results_dir.join(&p.name))?
                }
                None => query::all_tables(&cli.results_dir)?,
            };
            if tables.is_empty() {
                return Err(Exit(
                    2,
                    format!(
                        "no result tables under {} (run a pipeline first)",
                        cli.results_dir.display()
                    ),
                ));
            }
            let mut df = query::run_sql(&tables, sql).map_err(|e| {
                let names: Vec<&str> = tables.keys().map(|s| s.as_str()).collect();
                Exit(
                    2,
                    format!("query failed: {e}\n(tables: {})", names.join(", ")),
                )
            })?;
            print_frame(&mut df, *format)?;
            Ok(0)
        }
        Cmd::Report { file, output } => {
            let plan = plan_with_force(file, reg, cache, &[])?;
            let mut r = Reporter::new(
                &plan,
                &cli.results_dir,
                output.clone(),
                reproduce_command(file, &[]),
                "as recorded".into(),
            );
            let p = r.write(&plan, reg, &cli.results_dir, &Snapshot::default())?;
            println!("{}", p.display());
            Ok(0)
        }
        Cmd::Show { file, format, all } => {
            let p = Pipeline::load(file)?;
            let dir = cli.results_dir.join(&p.name);
            if !print_tables(&p, &dir, *format, *all)? {
                // Nothing failed: there is nothing to show yet (usage, as the README's
                // exit codes have it).
                return Err(Exit(
                    2,
                    format!(
                        "{} has no tables yet in {} (run it first)",
                        p.name,
                        dir.display()
                    ),
                ));
            }
            Ok(0)
        }
        Cmd::Gc {
            files,
            stale,
            dry_run,
        } => gc::run(&cache, files, *stale, reg, *dry_run),
        Cmd::Verify { files, drop } => verify::run(&cache, files, reg, *drop),
        Cmd::Exec { kind, key } => {
            let out = engine::instance::exec(reg, &cache, kind, key, install_ctrlc());
            Ok(match out {
                RunOutcome::Ran(_) | RunOutcome::Cached => 0,
                RunOutcome::Interrupted => 130,
                RunOutcome::Failed(e) => {
                    eprintln!("failed: {e}");
                    1
                }
                _ => 1,
            })
        }
        Cmd::Kinds => {
            for s in reg.iter() {
                println!("{:<10} v{}  {}", s.kind(), s.version(), s.about());
            }
            Ok(0)
        }
    }
}

/// The command line that reruns a pipeline (what the report shows).
fn reproduce_command(file: &Path, force: &[String]) -> String {
    let mut c = format!("ablate run {}", file.display());
    for f in force {
        c.push_str(&format!(" --force {f}"));
    }
    c
}

/// Plan a pipeline from the working directory, forcing these stages.
fn plan_with_force(
    file: &Path,
    reg: &Registry,
    cache: Cache,
    force: &[String],
) -> Result<Plan, SpecError> {
    Plan::new(
        file,
        reg,
        cache,
        &cwd(),
        &PlanOptions {
            force: force.to_vec(),
        },
    )
}

fn install_ctrlc() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let presses = Arc::new(AtomicUsize::new(0));
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            c.store(true, Ordering::SeqCst);
            eprintln!("\nstopping: unfinished instances leave no manifest and resume next run (Ctrl-C again to quit now)");
        } else {
            std::process::exit(130);
        }
    });
    cancel
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<(Option<usize>, Option<u64>), clap::Error> {
        let cli = Cli::try_parse_from(args)?;
        match cli.cmd {
            Cmd::Run { jobs, threads, .. } => Ok((jobs, threads)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn threads_flag_parsed() {
        assert_eq!(
            run_args(&["ablate", "run", "p.yaml", "-j", "2", "--threads", "3"]).unwrap(),
            (Some(2), Some(3))
        );
        assert_eq!(
            run_args(&["ablate", "run", "p.yaml", "-t", "1"]).unwrap(),
            (None, Some(1))
        );
        assert_eq!(
            run_args(&["ablate", "run", "p.yaml"]).unwrap(),
            (None, None)
        );
        let e = run_args(&["ablate", "run", "p.yaml", "--threads", "0"]).unwrap_err();
        assert!(e.to_string().contains("--threads"), "{e}");
    }
}
