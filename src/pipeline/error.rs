//! The one error type of pipeline validation: file, position, message.

use super::locate::Pos;
use std::fmt;
use std::path::PathBuf;

/// A pipeline that cannot run, with where and why. Printed as
/// `file:line:col: message` (the position is omitted when YAML has none).
#[derive(Debug, Clone)]
pub struct SpecError {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    pub message: String,
}

impl SpecError {
    pub fn new(file: impl Into<PathBuf>, pos: Option<Pos>, message: impl Into<String>) -> Self {
        SpecError {
            file: file.into(),
            pos,
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for SpecError {}
