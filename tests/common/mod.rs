//! Shared helpers of the end-to-end tests: the real binary in a temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (for the shipped datasets).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `ablate` in `dir` with the default cache and results folders under it;
/// returns (exit code, stdout, stderr).
pub fn ablate(dir: &Path, args: &[&str]) -> (i32, String, String) {
    ablate_with(dir, &[], args)
}

/// [`ablate`] with extra environment variables (e.g. `ABLATE_CACHE`).
pub fn ablate_with(dir: &Path, env: &[(&str, PathBuf)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ablate"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("ABLATE_CACHE")
        .env_remove("ABLATE_RESULTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
