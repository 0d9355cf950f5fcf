//! The one table of per-function limits.
//!
//! Each row names a limit once: its type, default, operator maximum and
//! documentation. From it come [`LimitOverrides`] (the config file's
//! `[limits]` and `[max]` tables and a function's `limits` settings, every
//! field optional), [`LimitSet`] (resolved values), [`LimitSet::with`],
//! the checks of both the config and the settings API (positive, within the
//! maximum), and the defaults. [`LimitSet::to_runtime`] maps the rows the
//! runtime enforces. Adding a limit is one row here (plus its mapping in
//! `to_runtime` if the runtime enforces it).
use std::time::Duration;

use serde::{Deserialize, Serialize};

macro_rules! limit_table {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty = $default:expr, max $max:expr; )*) => {
        /// Limits that may each be left unset (unset: the default).
        #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitOverrides {
            $( $(#[$doc])* pub $name: Option<$ty>, )*
        }

        /// Resolved per-function limits.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct LimitSet {
            $( $(#[$doc])* pub $name: $ty, )*
        }

        /// The built-in defaults (`[limits]` unset).
        pub const DEFAULT_LIMITS: LimitSet = LimitSet { $( $name: $default, )* };
        /// The built-in operator maxima (`[max]` unset).
        pub const DEFAULT_MAX: LimitSet = LimitSet { $( $name: $max, )* };

        impl LimitSet {
            /// These limits with the ones `o` sets replaced.
            pub fn with(self, o: &LimitOverrides) -> LimitSet {
                LimitSet { $( $name: o.$name.unwrap_or(self.$name), )* }
            }

            /// Every limit by name, widened to `u64`.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), u64::from(self.$name)), )* ]
            }
        }

        impl LimitOverrides {
            /// Every limit by name, widened to `u64` (`None`: unset).
            pub fn fields(&self) -> Vec<(&'static str, Option<u64>)> {
                vec![ $( (stringify!($name), self.$name.map(u64::from)), )* ]
            }
        }
    };
}

limit_table! {
    /// Instance memory, MiB.
    memory_mb: u64 = 128, max 1024;
    /// CPU time per request, ms.
    cpu_ms: u64 = 50, max 30_000;
    /// Wall time per request, ms.
    wall_ms: u64 = 30_000, max 300_000;
    /// Outbound requests per invocation.
    outbound_requests: u32 = 50, max 1000;
    /// Sequential requests one instance may serve: 1 is a fresh instance
    /// per request (the default); more opts a trusted, stateless function
    /// into instance reuse.
    instance_reuse: u32 = 1, max 1000;
}

impl LimitSet {
    /// The runtime's view of these limits.
    pub fn to_runtime(self) -> perch_runtime::Limits {
        perch_runtime::Limits {
            memory_bytes: (self.memory_mb as usize) << 20,
            cpu: Duration::from_millis(self.cpu_ms),
            wall: Duration::from_millis(self.wall_ms),
            ..perch_runtime::Limits::default()
        }
    }

    /// Checks a table of defaults against the maxima (the config file).
    pub fn check_defaults(&self, max: &LimitSet) -> Result<(), String> {
        for ((name, default), (_, max)) in self.fields().into_iter().zip(max.fields()) {
            if default == 0 || max == 0 {
                return Err(format!("limits.{name} and max.{name} must be positive"));
            }
            if default > max {
                return Err(format!(
                    "limits.{name} ({default}) is above max.{name} ({max})"
                ));
            }
        }
        Ok(())
    }
}

impl LimitOverrides {
    /// Checks a function's overrides against the operator maxima.
    pub fn check(&self, max: &LimitSet) -> Result<(), String> {
        for ((name, value), (_, limit)) in self.fields().into_iter().zip(max.fields()) {
            match value {
                Some(0) => return Err(format!("limits.{name} must be positive")),
                Some(v) if v > limit => {
                    return Err(format!(
                        "limits.{name} = {v} is above the operator maximum {limit}"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_set() {
        let o = LimitOverrides {
            cpu_ms: Some(7),
            ..Default::default()
        };
        let l = DEFAULT_LIMITS.with(&o);
        assert_eq!(l.cpu_ms, 7);
        assert_eq!(l.memory_mb, DEFAULT_LIMITS.memory_mb);
        assert_eq!(l.to_runtime().cpu, Duration::from_millis(7));
    }

    #[test]
    fn checks_name_the_limit() {
        let o = LimitOverrides {
            wall_ms: Some(DEFAULT_MAX.wall_ms + 1),
            ..Default::default()
        };
        assert!(
            o.check(&DEFAULT_MAX)
                .unwrap_err()
                .contains("limits.wall_ms")
        );
        let zero = LimitOverrides {
            outbound_requests: Some(0),
            ..Default::default()
        };
        assert_eq!(
            zero.check(&DEFAULT_MAX).unwrap_err(),
            "limits.outbound_requests must be positive"
        );
        assert!(DEFAULT_LIMITS.check_defaults(&DEFAULT_MAX).is_ok());
        assert!(DEFAULT_MAX.check_defaults(&DEFAULT_LIMITS).is_err());
    }
}
