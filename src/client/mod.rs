//! `wow-client`: holds a WebSocket to the relay per profile and replays
//! each request to the profile's local app.
//!
//! [`Client::run`] runs every configured profile until the shutdown future
//! resolves; then each finishes its in-flight deliveries and closes its
//! WebSocket. What the user sees on stdout arrives as [`Event`]s on the
//! channel given to [`Client::new`].
//!
//! A reload reaches a running client through [`ConfigUpdates`]: each
//! profile runs in a slot that holds it in a `watch` channel. A new target
//! or timeout is read by the next request without a reconnect; a new
//! server, token, TLS setting or offline policy restarts only that tunnel
//! (in-flight deliveries finish first); added profiles start and removed
//! ones detach.

pub mod echo;
pub mod forward;
pub mod history;
pub mod inspect;
pub mod login;
pub mod output;
mod session;
pub mod state;
pub mod status;
pub mod status_file;
mod target;
mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};
use warp::Filter;

use crate::config::{ClientConfig, Profile};
use crate::daemon::systemd;

pub use self::forward::Forwarder;
pub use self::history::{History, Recorder};
pub use self::output::{Delivery, Event};
pub use self::session::{Tunnel, backoff};
pub use self::state::StateDir;
pub use self::status::{ProfileStatus, StatusBoard, TunnelState};
pub use self::target::Target;

/// How long an exiting client waits for the history to take its last
/// deliveries.
const HISTORY_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    config: watch::Receiver<Arc<ClientConfig>>,
    updates: ConfigUpdates,
    events: mpsc::UnboundedSender<Event>,
    status: StatusBoard,
}

/// Puts a reloaded configuration in force in a running [`Client`].
#[derive(Debug, Clone)]
pub struct ConfigUpdates(watch::Sender<Arc<ClientConfig>>);

impl ConfigUpdates {
    /// Replaces the configuration; the client applies the difference.
    pub fn apply(&self, config: ClientConfig) {
        self.0.send_replace(Arc::new(config));
    }
}

/// What every tunnel of a client shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Where channels are kept.
    pub state: StateDir,
    /// The door to the local apps.
    pub forwarder: Forwarder,
    /// Lines for the user.
    pub events: mpsc::UnboundedSender<Event>,
    /// Live tunnel states.
    pub status: StatusBoard,
    /// The delivery history, when it could be opened.
    pub history: Option<Recorder>,
}

/// A running profile: its live settings, how to stop it, and a token that
/// fires once it has fully stopped.
struct Slot {
    profile: watch::Sender<Arc<Profile>>,
    stop: CancellationToken,
    finished: CancellationToken,
}

impl Client {
    /// A client for `config` that reports to `events`.
    pub fn new(config: ClientConfig, events: mpsc::UnboundedSender<Event>) -> Self {
        let (updates, config) = watch::channel(Arc::new(config));
        Client {
            config,
            updates: ConfigUpdates(updates),
            events,
            status: StatusBoard::new(),
        }
    }

    /// The live state of every tunnel, for `STATUS=` and status files.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
    }

    /// The handle a reload uses to change the running profiles.
    pub fn updates(&self) -> ConfigUpdates {
        self.updates.clone()
    }

    /// Runs every profile until `shutdown`, or until one is refused for
    /// good, following configuration updates meanwhile.
    ///
    /// # Errors
    ///
    /// The first profile failure that retrying cannot fix.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
        let initial = self.config.borrow_and_update().clone();
        if initial.profiles.is_empty() {
            return Err(ClientError::Config(
                "no profile to run: pass --server-url and --target-url, or configure [profiles.NAME]".to_owned(),
            ));
        }
        let (history, history_writer) = match History::open(&initial.state_dir) {
            Ok(history) => {
                let (recorder, writer) = Recorder::start(history, initial.history_max);
                (Some(recorder), Some(writer))
            }
            Err(error) => {
                warn!(error = format!("{error:#}"), "delivery history disabled");
                (None, None)
            }
        };
        let shared = Shared {
            state: StateDir::new(&initial.state_dir),
            forwarder: Forwarder::new().keeping(initial.history_body_max),
            events: self.events.clone(),
            status: self.status.clone(),
            history,
        };
        let stop = CancellationToken::new();
        if let Some(address) = initial.metrics_listen {
            serve_metrics(address, stop.clone()).await?;
        }
        tokio::spawn(status_file::keep_status_file(
            self.status.clone(),
            initial.state_dir.clone(),
            stop.clone(),
        ));
        let mut supervisor = Supervisor {
            shared,
            stop: stop.clone(),
            slots: BTreeMap::new(),
            retiring: BTreeMap::new(),
            tunnels: JoinSet::new(),
        };
        supervisor.apply(&initial.profiles);
        // Under systemd: ready with a valid configuration, even while the
        // relay is unreachable; every tunnel's state; proof of life.
        let board = self.status.clone();
        let status = systemd::spawn_status_watch(self.status.subscribe(), move || board.summary());
        let _watchdog = systemd::spawn_watchdog();
        systemd::ready();

        tokio::pin!(shutdown);
        let failure = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                Ok(()) = self.config.changed() => {
                    let config = self.config.borrow_and_update().clone();
                    supervisor.apply(&config.profiles);
                }
                Some(ended) = supervisor.tunnels.join_next() => {
                    if let Err(error) = flatten(ended) {
                        break Some(error);
                    }
                }
            }
        };
        drop(status);
        systemd::stopping();
        stop.cancel();
        let ended = supervisor.finish(failure).await;
        // The last deliveries of the drain are in the history before exit.
        if let Some(writer) = history_writer
            && tokio::time::timeout(HISTORY_FLUSH_TIMEOUT, writer)
                .await
                .is_err()
        {
            warn!("the last deliveries could not be written to the history in time");
        }
        ended
    }
}

/// The running profiles and their tasks.
struct Supervisor {
    shared: Shared,
    stop: CancellationToken,
    slots: BTreeMap<String, Slot>,
    /// Removed profiles still draining, so that one added back waits for them.
    retiring: BTreeMap<String, CancellationToken>,
    tunnels: JoinSet<Result<(), ClientError>>,
}

impl Supervisor {
    /// Makes the running profiles those of `profiles`.
    fn apply(&mut self, profiles: &[Profile]) {
        let removed: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !profiles.iter().any(|profile| &profile.name == *name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(slot) = self.slots.remove(&name) {
                debug!(profile = %name, "profile removed: detaching");
                slot.stop.cancel();
                self.retiring.insert(name, slot.finished);
            }
        }
        self.retiring.retain(|_, finished| !finished.is_cancelled());

        for profile in profiles {
            match self.slots.get(&profile.name) {
                Some(slot) if **slot.profile.borrow() == *profile => {}
                Some(slot) => {
                    slot.profile.send_replace(Arc::new(profile.clone()));
                }
                None => self.start(profile.clone()),
            }
        }
    }

    fn start(&mut self, profile: Profile) {
        let name = profile.name.clone();
        let (sender, receiver) = watch::channel(Arc::new(profile));
        let stop = self.stop.child_token();
        let finished = CancellationToken::new();
        let after = self.retiring.remove(&name);
        let span = tracing::info_span!("profile", profile = %name);
        let task = supervise(receiver, stop.clone(), self.shared.clone(), after);
        let done = finished.clone();
        self.tunnels.spawn(
            async move {
                let _finished = done.drop_guard();
                task.await
            }
            .instrument(span),
        );
        self.slots.insert(
            name,
            Slot {
                profile: sender,
                stop,
                finished,
            },
        );
    }

    /// Waits for every tunnel to drain after a stop.
    /// Waits for every tunnel to end; the shared parts (the history's
    /// recorder among them) go with the supervisor.
    async fn finish(mut self, failure: Option<ClientError>) -> Result<(), ClientError> {
        let mut first_error = failure;
        while let Some(ended) = self.tunnels.join_next().await {
            if let Err(error) = flatten(ended) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs one profile's tunnel, restarting it when a change needs a new
/// connection, until the slot is stopped or the server refuses it.
async fn supervise(
    mut profile: watch::Receiver<Arc<Profile>>,
    stop: CancellationToken,
    shared: Shared,
    after: Option<CancellationToken>,
) -> Result<(), ClientError> {
    // A profile removed and added back starts once its old tunnel is gone.
    if let Some(previous) = after {
        previous.cancelled().await;
    }
    loop {
        let connected = profile.borrow_and_update().clone();
        let generation = stop.child_token();
        let tunnel = Tunnel::live(profile.clone(), shared.clone())?;
        let running = tunnel.run(generation.clone());
        tokio::pin!(running);
        loop {
            tokio::select! {
                result = &mut running => return result,
                changed = profile.changed() => {
                    if changed.is_err() {
                        return running.await;
                    }
                    let next = profile.borrow_and_update().clone();
                    if connected.needs_reconnect(&next) {
                        break;
                    }
                    shared.status.update(&next.name, |entry| entry.target = next.target.to_string());
                    debug!(target_url = %next.target, "profile changed: the next request uses it");
                }
            }
        }
        debug!("profile changed: reconnecting with the new settings");
        generation.cancel();
        running.await?;
    }
}

/// The HTTP client for the server's own endpoints (`/new`, sign-in, token
/// renewal): bounded connect and request times, and `--insecure` honoured.
///
/// # Errors
///
/// When the TLS backend cannot be set up.
pub(crate) fn server_http(insecure: bool) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(insecure)
        .user_agent(concat!("wow-client/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|error| ClientError::Runtime(format!("cannot build the HTTP client: {error}")))
}

/// Serves the client's Prometheus metrics on `address` until `stop`.
async fn serve_metrics(
    address: std::net::SocketAddr,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    crate::telemetry::install();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| {
            ClientError::Config(format!(
                "cannot serve metrics on {address}: {error}; pick another metrics_listen address"
            ))
        })?;
    let route = warp::path!("metrics").map(crate::telemetry::render);
    tokio::spawn(
        warp::serve(route)
            .incoming(listener)
            .graceful(async move { stop.cancelled().await })
            .run(),
    );
    Ok(())
}

fn flatten(
    joined: Result<Result<(), ClientError>, tokio::task::JoinError>,
) -> Result<(), ClientError> {
    joined.map_err(|error| ClientError::Runtime(format!("a tunnel task failed: {error}")))?
}
