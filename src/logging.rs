//! Logs through tracing-subscriber, to stderr, without tearing the progress bar.

use std::io::Write;
use std::sync::Mutex;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// The progress bar log lines must be printed around (None when there is none).
pub fn set_bar(bar: Option<indicatif::ProgressBar>) {
    *BAR.lock().unwrap() = bar;
}

struct BarWriter;

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().unwrap().clone();
        match bar {
            Some(b) if !b.is_finished() => b.suspend(|| std::io::stderr().write_all(buf))?,
            _ => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

struct MakeBarWriter;

impl<'a> MakeWriter<'a> for MakeBarWriter {
    type Writer = BarWriter;
    fn make_writer(&'a self) -> BarWriter {
        BarWriter
    }
}

/// Set up logging: `RUST_LOG` wins; otherwise `warn` with `-q`, `info` by default,
/// `debug` with `-v`, `trace` with `-vv`.
pub fn init(verbose: u8, quiet: bool) {
    let level = if quiet {
        "warn"
    } else {
        match verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("ablate={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(MakeBarWriter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}
