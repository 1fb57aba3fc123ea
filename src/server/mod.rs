//! `wow-server`: the public relay that takes webhooks and carries them to
//! attached clients.
//!
//! [`Server::run`] serves on a listener the caller bound, until the
//! shutdown future resolves; then it drains (stops accepting, lets
//! in-flight deliveries finish up to `limits.drain_timeout`) and closes
//! every client WebSocket with code 1001 so clients reconnect elsewhere.

mod attach;
pub mod auth;
pub mod cluster;
mod http;
pub mod queue;
mod redeliver;
pub mod registry;
mod request;
mod session;
mod webhook;

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ::http::header::{self, HeaderMap};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::auth::{SignIn, Tokens};
use self::cluster::Cluster;
use self::http::RequestMeta;
use self::queue::Queue;
use self::registry::Registry;
use crate::config::ServerConfig;
use crate::daemon::systemd;
use crate::files;

/// How often `STATUS=` is brought up to date under systemd.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// A configured relay, ready to serve.
#[derive(Debug)]
pub struct Server {
    relay: Arc<Relay>,
}

/// State shared by every request and session of a running server.
#[derive(Debug)]
pub struct Relay {
    config: ArcSwap<ServerConfig>,
    registry: Arc<Registry>,
    queue: Queue,
    tokens: Tokens,
    sign_in: SignIn,
    draining: AtomicBool,
    cluster: OnceLock<Arc<Cluster>>,
}

impl Server {
    /// Prepares the state dir and the token key.
    ///
    /// # Errors
    ///
    /// When the state dir or the signing key cannot be set up.
    pub fn new(config: ServerConfig) -> anyhow::Result<Self> {
        files::ensure_private_dir(&config.state_dir)?;
        crate::telemetry::install();
        let tokens = Tokens::load(&config.auth, &config.state_dir)?;
        let registry = Arc::new(Registry::load(
            &config.state_dir,
            config.limits.max_channels,
        )?);
        let queue = Queue::open(&config.state_dir)?;
        let relay = Arc::new(Relay {
            config: ArcSwap::from_pointee(config),
            registry,
            queue,
            tokens,
            sign_in: SignIn::new()?,
            draining: AtomicBool::new(false),
            cluster: OnceLock::new(),
        });
        Ok(Server { relay })
    }

    /// The shared state, for inspection.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Serves on `listener` until `shutdown` resolves, then drains. With
    /// peers configured it joins the cluster first, and leaves it before
    /// closing any client's WebSocket.
    ///
    /// # Errors
    ///
    /// When the cluster gossip cannot start; serving errors of single
    /// connections are logged, not returned.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        let cluster = Cluster::start(&self.relay.config(), address).await?;
        // `run` is called once per server; a second call keeps the first cluster.
        let _first = self.relay.cluster.set(cluster.clone());
        let (known, _) = self.relay.registry.counts();
        info!(%address, channels = known, server_url = cluster.server_url(), "listening");
        let config = self.relay.config();
        if config.auth.enabled() && config.cluster.secret.is_empty() {
            warn!(
                "auth mode is on but cluster.secret is unset: /metrics, /internal/* and /traefik-config answer anyone; set cluster.secret"
            );
        }
        let stop_accepting = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let serving = tokio::spawn(http::serve(
            listener,
            self.relay.clone(),
            stop_accepting.clone(),
        ));
        let saving = tokio::spawn(
            self.relay
                .registry
                .clone()
                .keep_saved(stop_background.clone()),
        );
        let sweeping = tokio::spawn(sweep(self.relay.clone(), stop_background.clone()));
        let expiring = tokio::spawn(expire_queue(self.relay.clone(), stop_background.clone()));
        let syncing = cluster.spawn(self.relay.clone());
        // Under systemd: ready once accepting, live channel counts, proof of life.
        let relay = self.relay.clone();
        let status = systemd::spawn_status_poll(STATUS_REFRESH, move || relay.status_line());
        let _watchdog = systemd::spawn_watchdog();
        systemd::ready();

        shutdown.await;
        drop(status);
        systemd::stopping();
        systemd::status("draining in-flight deliveries");
        info!("shutting down: draining in-flight deliveries");
        self.relay.draining.store(true, Ordering::Relaxed);
        // Peers stop routing here before any client is told to go away.
        cluster.leave().await;
        for session in self.relay.registry.sessions() {
            session.mux().go_away();
        }
        stop_accepting.cancel();
        serving.await?;
        for session in self.relay.registry.sessions() {
            session.close(CloseCode::Away);
        }
        stop_background.cancel();
        syncing.await?;
        cluster.shutdown().await;
        sweeping.await?;
        expiring.await?;
        saving.await?;
        info!("stopped");
        Ok(())
    }
}

/// Expires channels nobody holds, every `channels.cleanup_interval`.
async fn sweep(relay: Arc<Relay>, stop: CancellationToken) {
    loop {
        let channels = relay.config().channels.clone();
        let interval = channels
            .cleanup_interval
            .max(std::time::Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
        let expired = relay.registry.expire(
            SystemTime::now(),
            channels.cleanup_interval,
            channels.idle_ttl,
        );
        for channel in &expired {
            info!(%channel, "channel expired");
        }
    }
}

/// Drops queued deliveries older than `channels.queue_ttl`, logging each.
async fn expire_queue(relay: Arc<Relay>, stop: CancellationToken) {
    loop {
        let ttl = relay.config().channels.queue_ttl;
        let every = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        match relay.queue.expire(SystemTime::now(), ttl).await {
            Ok(expired) => {
                for queued in expired {
                    warn!(
                        channel = %queued.channel,
                        delivery = %queued.head.delivery_id.unwrap_or_default(),
                        ttl = ?ttl,
                        "queued delivery expired undelivered"
                    );
                }
            }
            Err(error) => error!(
                error = format!("{error:#}"),
                "cannot expire queued deliveries"
            ),
        }
    }
}

impl Relay {
    /// The configuration in force.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Puts a reloaded configuration in force: requests that start from now
    /// on read it; those in flight keep the one they started with.
    pub fn set_config(&self, config: ServerConfig) {
        self.config.store(Arc::new(config));
    }

    /// The channel registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The offline queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The token signer.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// This replica's cluster, once [`Server::run`] has started.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// `12 channels, 9 attached`: the known channels and those a client
    /// holds, as `systemctl status` shows them.
    pub fn status_line(&self) -> String {
        let (known, attached) = self.registry.counts();
        let plural = if known == 1 { "" } else { "s" };
        format!("{known} channel{plural}, {attached} attached")
    }

    /// GitHub sign-ins in progress.
    pub fn sign_in(&self) -> &SignIn {
        &self.sign_in
    }

    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether `X-Forwarded-*` from this peer are believed.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.config()
            .trusted_proxies
            .iter()
            .any(|network| network.contains(&peer))
    }

    /// `public_url`, or the scheme and host the request for `/new` used.
    fn public_base(&self, headers: &HeaderMap, meta: &RequestMeta) -> String {
        let config = self.config();
        if let Some(public_url) = &config.public_url {
            return public_url.clone();
        }
        let trusted = self.is_trusted(meta.peer.ip());
        let forwarded = |name: &str| {
            headers
                .get(name)
                .filter(|_| trusted)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split(',').next())
                .map(|value| value.trim().to_owned())
        };
        let scheme = forwarded("x-forwarded-proto").unwrap_or_else(|| "http".to_owned());
        let host = forwarded("x-forwarded-host")
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            })
            .or_else(|| meta.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| config.listen.to_string());
        format!("{scheme}://{host}")
    }
}
