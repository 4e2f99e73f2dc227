//! Errors of the data sources. Every error about a file names the file.

use std::path::{Path, PathBuf};

/// An error reading, building or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its contents are wrong (magic number, sizes, ...).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// The image crate could not decode or encode the file.
    #[error("{}: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// A required file is missing (lists what was tried).
    #[error("{what} not found; tried {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound { what: String, tried: Vec<PathBuf> },
    /// Parameters or data that do not fit together (count too large, bad resolution, ...).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn image(path: &Path, source: image::ImageError) -> Self {
        DataError::Image {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result of the data module.
pub type Result<T> = std::result::Result<T, DataError>;
