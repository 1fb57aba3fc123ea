//! The client's validated configuration: profiles, each with its target.

use std::path::PathBuf;
use std::time::Duration;

use super::{LogFormat, LogLevel, OfflinePolicy};
use crate::Secret;
use crate::client::Target;

/// The name of the profile built from flags when none is configured.
pub const DEFAULT_PROFILE: &str = "default";

/// Everything `wow-client` runs with (SPEC §2).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Where channel ids, tokens and the history live.
    pub state_dir: PathBuf,
    /// Least severe log level written.
    pub log_level: LogLevel,
    /// Log output format.
    pub log_format: LogFormat,
    /// Deliveries kept in the local history.
    pub history_max: usize,
    /// Request and response bodies are kept in the history up to this many
    /// bytes each; longer ones are cut and marked so.
    pub history_body_max: u64,
    /// Where to serve the client's Prometheus metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The tunnels to run, each with its own channel.
    pub profiles: Vec<Profile>,
}

/// One tunnel: a channel on a server, forwarded to a local target.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile's name (`default` for the unnamed one).
    pub name: String,
    /// The relay, `https://hooks.example.com`.
    pub server_url: String,
    /// Where requests go.
    pub target: Target,
    /// Session token for an auth-mode server's `/new`.
    pub token: Secret,
    /// Skip TLS verification towards the server.
    pub insecure: bool,
    /// Per request to the app; `None` waits forever.
    pub timeout: Option<Duration>,
    /// What the server does with webhooks while this client is away;
    /// `None`: the server's default.
    pub offline: Option<OfflinePolicy>,
}

impl Profile {
    /// Whether moving from `self` to `next` needs a new connection: the
    /// server, the token, TLS checking or the offline policy changed. A new
    /// target or timeout does not; the next request uses it.
    pub fn needs_reconnect(&self, next: &Profile) -> bool {
        self.server_url != next.server_url
            || self.token != next.token
            || self.insecure != next.insecure
            || self.offline != next.offline
    }
}

impl Default for ClientConfig {
    /// The built-in defaults, with no profile and an empty state dir path.
    fn default() -> Self {
        ClientConfig {
            state_dir: PathBuf::new(),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            history_max: 1000,
            history_body_max: 1 << 20,
            metrics_listen: None,
            profiles: Vec::new(),
        }
    }
}
