//! The server's validated configuration: every value checked and filled in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{LogFormat, LogLevel, OfflinePolicy};
use crate::Secret;

/// Everything `wow-server` runs with (SPEC §2).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address the HTTP listener binds.
    pub listen: SocketAddr,
    /// Base of webhook URLs (`https://hooks.example.com`, no trailing
    /// slash); `None` builds them from each `/new` request.
    pub public_url: Option<String>,
    /// Where channels, the token key and the queue live.
    pub state_dir: PathBuf,
    /// Least severe log level written.
    pub log_level: LogLevel,
    /// Log output format.
    pub log_format: LogFormat,
    /// Proxies whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Request limits.
    pub limits: Limits,
    /// Channel lifetimes and the offline policy.
    pub channels: Channels,
    /// GitHub OAuth and token signing.
    pub auth: Auth,
    /// Replica membership.
    pub cluster: Cluster,
}

/// Limits that protect the server from senders.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body, in bytes; larger ones get 413.
    pub max_body: u64,
    /// How long a sender waits at most for the app's answer.
    pub request_timeout: Duration,
    /// A request's head must arrive within this.
    pub header_timeout: Duration,
    /// Largest request head, in bytes; larger ones get 431.
    pub max_header_bytes: u64,
    /// On shutdown, in-flight deliveries get this long to finish.
    pub drain_timeout: Duration,
    /// Most channels the registry holds; `/new` answers 503 beyond it.
    pub max_channels: usize,
}

/// Channel lifetimes and what happens while no client is attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Channels {
    /// Issued channels that were never attached expire after this.
    pub cleanup_interval: Duration,
    /// Channels nobody attached for this long expire.
    pub idle_ttl: Duration,
    /// Default for channels whose client states no preference.
    pub offline: OfflinePolicy,
    /// Deliveries queued per channel at most.
    pub queue_max: u64,
    /// Bytes queued per channel at most.
    pub queue_max_bytes: u64,
    /// Queued deliveries older than this are dropped.
    pub queue_ttl: Duration,
}

/// GitHub OAuth and token signing; auth mode is on when
/// `github_client_id` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    /// OAuth App client id; empty: no auth mode.
    pub github_client_id: String,
    /// OAuth App client secret.
    pub github_client_secret: Secret,
    /// Organisation a user must belong to; empty: any GitHub user.
    pub github_org: String,
    /// Key for channel and session tokens; empty: a random key kept in the state dir.
    pub jwt_secret: Secret,
    /// GitHub's web address (GitHub Enterprise: its own).
    pub github_url: String,
    /// GitHub's API address.
    pub github_api_url: String,
    /// Lifetime of a session token.
    pub session_ttl: Duration,
    /// Lifetime of a channel token in auth mode.
    pub channel_ttl: Duration,
}

/// Replica membership (SPEC §6).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// DNS name whose A records are the peers.
    pub peer_domain: String,
    /// Static memberlist seeds, `host:port`.
    pub peers: Vec<String>,
    /// Address the gossip listener binds.
    pub bind_addr: String,
    /// Gossip port.
    pub memberlist_port: u16,
    /// How often peers are re-resolved and state is synced.
    pub sync_interval: Duration,
    /// Address other replicas reach this one at.
    pub advertise_addr: String,
    /// Bearer for internal endpoints; its SHA-256 keys gossip encryption.
    pub secret: Secret,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: None,
            state_dir: PathBuf::from("/var/lib/wow"),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            channels: Channels::default(),
            auth: Auth::default(),
            cluster: Cluster::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 25 << 20,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            drain_timeout: Duration::from_secs(10),
            max_channels: 10_000,
        }
    }
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            cleanup_interval: Duration::from_secs(5 * 60),
            idle_ttl: Duration::from_secs(168 * 3600),
            offline: OfflinePolicy::Queue,
            queue_max: 1000,
            queue_max_bytes: 256 << 20,
            queue_ttl: Duration::from_secs(72 * 3600),
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            github_client_id: String::new(),
            github_client_secret: Secret::default(),
            github_org: String::new(),
            jwt_secret: Secret::default(),
            github_url: "https://github.com".to_owned(),
            github_api_url: "https://api.github.com".to_owned(),
            session_ttl: Duration::from_secs(720 * 3600),
            channel_ttl: Duration::from_secs(8760 * 3600),
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            peer_domain: String::new(),
            peers: Vec::new(),
            bind_addr: "0.0.0.0".to_owned(),
            memberlist_port: 7946,
            sync_interval: Duration::from_secs(5),
            advertise_addr: String::new(),
            secret: Secret::default(),
        }
    }
}

impl Auth {
    /// Whether GitHub sign-in guards `/new`.
    pub fn enabled(&self) -> bool {
        !self.github_client_id.is_empty()
    }
}
