//! Configuration: the validated settings both binaries run with, the
//! layers they are read from, and the units users write them in.
//!
//! [`load`] reads and checks every layer (SPEC §2) into [`ServerConfig`]
//! or [`ClientConfig`]; [`print`] writes the result back as TOML.

pub mod args;
mod client;
mod layers;
pub mod load;
pub mod print;
mod raw;
mod server;
mod units;

use std::fmt;
use std::str::FromStr;

pub use client::{ClientConfig, DEFAULT_PROFILE, Profile};
pub use load::{ConfigErrors, EnvVars, Loaded, Origin, Origins, WatchSet};
pub use server::{Auth, Channels, Cluster, Limits, ServerConfig};
pub use units::{format_duration, format_size, parse_duration, parse_size};

/// How much the daemons log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only failures an operator must look at.
    Error,
    /// Also recoverable faults and peer misbehaviour.
    Warn,
    /// Also lifecycle events (the default).
    Info,
    /// Also each request and frame.
    Debug,
    /// Everything, bytes included.
    Trace,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
    /// Structured entries sent to the systemd journal.
    Journald,
}

/// What the server does with a webhook while no client is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflinePolicy {
    /// Store it and deliver it when the client is back (202).
    Queue,
    /// Refuse it with 503 and `Retry-After`.
    Reject,
}

macro_rules! keyword_enum {
    ($type:ty, $what:literal, $($variant:path => $name:literal),+ $(,)?) => {
        impl $type {
            /// The name as written in configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($variant => $name,)+
                }
            }
        }

        impl FromStr for $type {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok($variant),)+
                    _ => Err(format!(
                        concat!("invalid ", $what, " {:?}: use one of {}"),
                        text,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(LogLevel, "log level",
    LogLevel::Error => "error",
    LogLevel::Warn => "warn",
    LogLevel::Info => "info",
    LogLevel::Debug => "debug",
    LogLevel::Trace => "trace",
);

keyword_enum!(LogFormat, "log format",
    LogFormat::Text => "text",
    LogFormat::Json => "json",
    LogFormat::Journald => "journald",
);

keyword_enum!(OfflinePolicy, "offline policy",
    OfflinePolicy::Queue => "queue",
    OfflinePolicy::Reject => "reject",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_read_case_insensitively_and_errors_list_the_choices() {
        assert_eq!("DEBUG".parse::<LogLevel>(), Ok(LogLevel::Debug));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let error = "loud".parse::<LogLevel>().unwrap_err();
        assert!(error.contains("error, warn, info, debug, trace"), "{error}");
        assert_eq!(OfflinePolicy::Queue.to_string(), "queue");
    }
}
