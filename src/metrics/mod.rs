//! Numerical evaluation metrics for GAN samples (DESIGN.md, "Evaluation"; issue 6).
//!
//! A pure library: no YAML, no CLI, and no tensors except in [`judge`] (the evaluator
//! network, on [`crate::nn`]). Inputs are plain row-major slices
//! (rows = samples), outputs are plain structs. The `evaluate` stage turns judge
//! features, labels and images into these slices.
//!
//! - [`frechet`]: Gaussian fits and the Frechet distance (FID in judge space).
//! - [`linalg`]: the symmetric eigendecomposition (nalgebra's) behind it.
//! - [`prdc`](mod@prdc): precision/recall (Kynkaanniemi et al. 2019) and density/coverage
//!   (Naeem et al. 2020) from exact k-nearest-neighbour balls.
//! - [`modes`]: mode counts and reverse KL to uniform (StackedMNIST protocol).
//! - [`mixture`]: modes covered and high-quality share for Gaussian mixtures.
//! - [`spectral`]: radially averaged power spectra and a log-spectral distance.
//! - [`judge`]: the CNN classifier whose features and predictions the above consume.
//! - [`registry`]: the metrics the `evaluate` stage reports, each with what it needs.

pub mod frechet;
pub mod judge;
pub mod linalg;
pub mod mixture;
pub mod modes;
pub mod prdc;
pub mod registry;
pub mod spectral;

mod distance;

pub use frechet::{
    frechet_distance, frechet_distance_eps, frechet_distance_features, gaussian_stats, Gaussian,
};
pub use linalg::{sqrtm_psd, sym_eigen, SymEigen};
pub use mixture::{mixture_stats, nearest_centres, MixtureStats};
pub use modes::{
    class_accuracy, mode_histogram, mode_stats, modes_covered, modes_covered_min,
    reverse_kl_from_counts, reverse_kl_uniform, stacked_mnist_mode, ModeStats,
};
pub use prdc::{knn_radii, prdc, prdc_with_k, Prdc};
pub use spectral::{compare_spectra, radial_power_spectrum, spectral_distance, SpectralDistance};

/// Errors for malformed metric inputs (shapes, sizes, parameters).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// A flat slice's length is not a multiple of the row width, or two inputs disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Too few samples for the statistic (e.g. N < 2 for a covariance, N <= k for k-NN).
    #[error("too few samples: {0}")]
    TooFewSamples(String),
    /// A parameter out of range (k = 0, sigma <= 0, a label >= K, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A numerical routine did not converge or produced a non-finite value.
    #[error("numerical failure: {0}")]
    Numerical(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, MetricsError>;

/// Number of rows of a flat row-major `[N, dim]` slice, checking the shape.
pub(crate) fn rows(data_len: usize, dim: usize, what: &str) -> Result<usize> {
    if dim == 0 {
        return Err(MetricsError::InvalidArgument(format!(
            "{what}: dim must be > 0"
        )));
    }
    if !data_len.is_multiple_of(dim) {
        return Err(MetricsError::Shape(format!(
            "{what}: length {data_len} is not a multiple of dim {dim}"
        )));
    }
    Ok(data_len / dim)
}

#[cfg(test)]
mod bench;
