//! A container version's spec, as a tenant writes it (`{"container":{…}}`)
//! and as the registry keeps it, with its defaults and the bounds checked
//! against the operator's maxima.
use serde::{Deserialize, Serialize};

/// Instances one version may run at most, whatever the operator's maxima.
pub const MAX_INSTANCES: u32 = 10;

/// The operator's bounds on a spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Maxima {
    /// `max.container_memory_mb`.
    pub memory_mb: u32,
    /// `max.container_cpus`.
    pub cpus: f64,
}

impl Default for Maxima {
    fn default() -> Self {
        Maxima {
            memory_mb: 4096,
            cpus: 4.0,
        }
    }
}

fn memory_mb() -> u32 {
    256
}
fn cpus() -> f64 {
    1.0
}
fn max_instances() -> u32 {
    1
}
fn concurrency() -> u32 {
    100
}
fn idle_timeout_s() -> u32 {
    300
}
fn start_timeout_s() -> u32 {
    30
}

/// What a container version runs and how it scales.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The image: an id (`sha256:<64 hex>`) once stored; a tenant may
    /// write one of its own tags, resolved when the version is created.
    pub image: String,
    /// The port the container listens on (1–65535).
    pub port: u16,
    /// The command; `None` runs the image's own.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Memory limit (no swap), MiB.
    #[serde(default = "memory_mb")]
    pub memory_mb: u32,
    /// CPU limit, in CPUs.
    #[serde(default = "cpus")]
    pub cpus: f64,
    /// Instances kept running while the version is deployed.
    #[serde(default)]
    pub min_instances: u32,
    /// Instances at most.
    #[serde(default = "max_instances")]
    pub max_instances: u32,
    /// In-flight requests per instance before another is started.
    #[serde(default = "concurrency")]
    pub concurrency: u32,
    /// An instance not needed for this long is stopped (seconds).
    #[serde(default = "idle_timeout_s")]
    pub idle_timeout_s: u32,
    /// A path that must answer 200 before the instance gets requests;
    /// `None` waits for a TCP connect.
    #[serde(default)]
    pub health_path: Option<String>,
    /// How long a request waits for an instance to become ready (seconds).
    #[serde(default = "start_timeout_s")]
    pub start_timeout_s: u32,
}

/// A spec that breaks a rule: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {reason}")]
pub struct SpecError {
    /// The field's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

impl ContainerSpec {
    /// Parses the body of a container upload, `{"container":{…}}`.
    pub fn from_upload(body: &[u8]) -> Result<ContainerSpec, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Upload {
            container: ContainerSpec,
        }
        serde_json::from_slice::<Upload>(body)
            .map(|u| u.container)
            .map_err(|e| e.to_string())
    }

    /// Checks every field against its range and the operator's maxima.
    pub fn validate(&self, max: &Maxima) -> Result<(), SpecError> {
        if self.image.trim().is_empty() {
            return Err(bad("image", "is required"));
        }
        if self.port == 0 {
            return Err(bad("port", "must be 1–65535"));
        }
        if let Some(cmd) = &self.command {
            if cmd.is_empty() || cmd.len() > 256 || cmd.iter().any(|a| a.len() > 4096) {
                return Err(bad(
                    "command",
                    "must hold 1–256 arguments of at most 4096 bytes, or be null",
                ));
            }
            if cmd.iter().any(|a| a.contains('\0')) {
                return Err(bad("command", "must not contain NUL"));
            }
        }
        if self.memory_mb < 16 || self.memory_mb > max.memory_mb {
            return Err(bad(
                "memory_mb",
                format!("must be 16–{} (the operator's maximum)", max.memory_mb),
            ));
        }
        if !self.cpus.is_finite() || self.cpus < 0.01 || self.cpus > max.cpus {
            return Err(bad(
                "cpus",
                format!("must be 0.01–{} (the operator's maximum)", max.cpus),
            ));
        }
        if self.max_instances < 1 || self.max_instances > MAX_INSTANCES {
            return Err(bad("max_instances", format!("must be 1–{MAX_INSTANCES}")));
        }
        if self.min_instances > self.max_instances {
            return Err(bad("min_instances", "must be at most max_instances"));
        }
        if self.concurrency < 1 || self.concurrency > 10_000 {
            return Err(bad("concurrency", "must be 1–10000"));
        }
        if !(1..=86_400).contains(&self.idle_timeout_s) {
            return Err(bad("idle_timeout_s", "must be 1–86400"));
        }
        if !(1..=300).contains(&self.start_timeout_s) {
            return Err(bad("start_timeout_s", "must be 1–300"));
        }
        if let Some(p) = &self.health_path {
            let ok =
                p.starts_with('/') && p.len() <= 1024 && p.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(bad(
                    "health_path",
                    "must be a path starting with `/` (printable ASCII, at most 1024 bytes)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<ContainerSpec, String> {
        ContainerSpec::from_upload(
            format!(r#"{{"container":{{"image":"sha256:ab","port":8080{extra}}}}}"#).as_bytes(),
        )
    }

    #[test]
    fn defaults_fill_in() {
        let s = spec("").unwrap();
        assert_eq!(
            (s.memory_mb, s.cpus, s.min_instances, s.max_instances),
            (256, 1.0, 0, 1)
        );
        assert_eq!(
            (s.concurrency, s.idle_timeout_s, s.start_timeout_s),
            (100, 300, 30)
        );
        assert_eq!((s.command, s.health_path), (None, None));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        assert!(spec(r#","colour":"red""#).unwrap_err().contains("colour"));
        let max = Maxima::default();
        let field = |extra: &str| spec(extra).unwrap().validate(&max).unwrap_err().field;
        assert_eq!(
            ContainerSpec::from_upload(br#"{"container":{"image":"i","port":0}}"#)
                .unwrap()
                .validate(&max)
                .unwrap_err()
                .field,
            "port"
        );
        assert_eq!(field(r#","memory_mb":4097"#), "memory_mb");
        assert_eq!(field(r#","cpus":4.5"#), "cpus");
        assert_eq!(field(r#","max_instances":11"#), "max_instances");
        assert_eq!(field(r#","min_instances":2"#), "min_instances");
        assert_eq!(field(r#","idle_timeout_s":0"#), "idle_timeout_s");
        assert_eq!(field(r#","start_timeout_s":301"#), "start_timeout_s");
        assert_eq!(field(r#","health_path":"up""#), "health_path");
        assert_eq!(field(r#","command":[]"#), "command");
        assert!(
            spec(r#","memory_mb":4096,"cpus":4"#)
                .unwrap()
                .validate(&max)
                .is_ok()
        );
    }
}
