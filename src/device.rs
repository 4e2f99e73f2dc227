//! The device a user asks for (`--device`, a train stage's `device` param) and the one
//! this build can give. The one parser of `cpu | cuda | auto`: serde (YAML params) and
//! clap (the command line) both read [`DeviceChoice`].

use anyhow::{bail, Result};

/// Where stages that can use a GPU run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// CUDA device 0; an error in a build without the `cuda` feature.
    Cuda,
    /// CUDA when this build has it, else the CPU.
    Auto,
}

/// The backend a [`DeviceChoice`] resolves to in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda,
}

impl Backend {
    /// `cpu` or `cuda`, as manifests and tables say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

impl DeviceChoice {
    /// The backend this build uses for the choice: `cuda` needs the `cuda` feature,
    /// `auto` takes CUDA when built with it.
    pub fn resolve(self) -> Result<Backend> {
        Ok(match self {
            DeviceChoice::Cpu => Backend::Cpu,
            DeviceChoice::Cuda if cfg!(feature = "cuda") => Backend::Cuda,
            DeviceChoice::Cuda => {
                bail!("device cuda asked for, but this ablate was built without the `cuda` feature")
            }
            DeviceChoice::Auto if cfg!(feature = "cuda") => Backend::Cuda,
            DeviceChoice::Auto => Backend::Cpu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_params_and_resolves_in_this_build() {
        let d: Option<DeviceChoice> = serde_json::from_value(serde_json::json!("auto")).unwrap();
        assert_eq!(d, Some(DeviceChoice::Auto));
        assert_eq!(serde_json::to_value(DeviceChoice::Cuda).unwrap(), "cuda");
        let e = serde_json::from_value::<DeviceChoice>(serde_json::json!("gpu")).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected one of `cpu`, `cuda`, `auto`"),
            "{e}"
        );
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Backend::Cpu);
        let cuda = cfg!(feature = "cuda");
        assert_eq!(DeviceChoice::Cuda.resolve().is_ok(), cuda);
        let auto = DeviceChoice::Auto.resolve().unwrap();
        assert_eq!(auto, if cuda { Backend::Cuda } else { Backend::Cpu });
    }
}
