//! `wow-client`: holds a WebSocket to the relay per profile and replays
//! each request to the profile's local app.
//!
//! [`Client::run`] runs every configured profile until the shutdown future
//! resolves; then each finishes its in-flight deliveries and closes its
//! WebSocket. What the user sees on stdout arrives as [`Event`]s on the
//! channel given to [`Client::new`].

pub mod echo;
pub mod forward;
pub mod output;
mod session;
pub mod state;
pub mod status;
mod target;
mod tls;

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ClientConfig;
use crate::daemon::systemd;

pub use self::forward::Forwarder;
pub use self::output::{Delivery, Event};
pub use self::session::{Tunnel, backoff};
pub use self::state::StateDir;
pub use self::status::{ProfileStatus, StatusBoard, TunnelState};
pub use self::target::Target;

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The server refused a channel or token for good (exit code 2).
    #[error("{0}")]
    ChannelRefused(String),
    /// The state dir cannot be used (exit code 1).
    #[error("{0}")]
    State(String),
    /// Anything else (exit code 1).
    #[error("{0}")]
    Runtime(String),
}

impl ClientError {
    /// The process exit code SPEC §1 gives this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Config(_) | ClientError::ChannelRefused(_) => 2,
            ClientError::State(_) | ClientError::Runtime(_) => 1,
        }
    }
}

/// A configured client, ready to run.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    events: mpsc::UnboundedSender<Event>,
    status: StatusBoard,
}

impl Client {
    /// A client for `config` that reports to `events`.
    pub fn new(config: ClientConfig, events: mpsc::UnboundedSender<Event>) -> Self {
        Client {
            config,
            events,
            status: StatusBoard::new(),
        }
    }

    /// The live state of every tunnel, for `STATUS=` and status files.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
    }

    /// Runs every profile until `shutdown`, or until one is refused for good.
    ///
    /// # Errors
    ///
    /// The first profile failure that retrying cannot fix.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
        if self.config.profiles.is_empty() {
            return Err(ClientError::Config(
                "no profile to run: pass --server-url and --target-url, or configure [profiles.NAME]".to_owned(),
            ));
        }
        let forwarder = Forwarder::new();
        let state = StateDir::new(&self.config.state_dir);
        let stop = CancellationToken::new();
        let mut tunnels = JoinSet::new();
        let status_changes = self.status.subscribe();
        for profile in self.config.profiles {
            let tunnel = Tunnel::new(
                profile,
                state.clone(),
                forwarder.clone(),
                self.events.clone(),
                self.status.clone(),
            )?;
            tunnels.spawn(tunnel.run(stop.child_token()));
        }
        // Under systemd: ready with a valid configuration, even while the
        // relay is unreachable; every tunnel's state; proof of life.
        let board = self.status.clone();
        let status = systemd::spawn_status_watch(status_changes, move || board.summary());
        let _watchdog = systemd::spawn_watchdog();
        systemd::ready();

        let failure = tokio::select! {
            () = shutdown => None,
            Some(ended) = tunnels.join_next() => Some(flatten(ended)),
        };
        drop(status);
        systemd::stopping();
        stop.cancel();
        let mut first_error = failure.and_then(Result::err);
        while let Some(ended) = tunnels.join_next().await {
            if let Err(error) = flatten(ended) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn flatten(
    joined: Result<Result<(), ClientError>, tokio::task::JoinError>,
) -> Result<(), ClientError> {
    joined.map_err(|error| ClientError::Runtime(format!("a tunnel task failed: {error}")))?
}
