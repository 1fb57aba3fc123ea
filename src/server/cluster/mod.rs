//! Clustering (SPEC §6): replicas find each other by gossip, learn what
//! each holds, forward webhooks to the replica holding their channel, and
//! hand queued deliveries over to it.
//!
//! Every replica has a [`Cluster`], a single server too: it knows this
//! replica's `server_url` and answers `/internal/channels` and
//! `/traefik-config` (`traefik`). Gossip (`membership`, the only user of
//! memberlist) starts only when `cluster.peers` or `cluster.peer_domain` is
//! set. Then, every `sync_interval`, one task re-resolves the peers
//! (`discovery`) and joins new ones, fetches every alive peer's channels
//! into a cache (`peers`), and hands over queued deliveries whose channel a
//! peer holds (`handoff`). Webhooks cross to the holder through `forward`,
//! signed with the `marker`.
//!
//! Ownership is learnt by polling, not gossiped: a replica's channels are
//! what its `/internal/channels` said at the last sync. A webhook the cache
//! cannot place (its client just attached elsewhere, or the channel was
//! just issued there) asks the peers about that one channel, briefly.

mod discovery;
mod forward;
mod handoff;
mod marker;
mod membership;
mod peers;
mod traefik;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use uuid::Uuid;

use self::discovery::{advertise_ip, discover, node_name};
pub use self::forward::{BoxError, Failed, Outbound, PeerBody, X_WOW_OUTCOME, set_outcome};
use self::marker::ForwardKey;
pub use self::marker::{Kind, MarkerError, PeerRequest, is_peer_header, peer_head};
use self::membership::{Member, Membership, Settings};
use self::peers::Peers;
pub use self::peers::{ChannelList, ChannelState};
use self::traefik::Holdings;
use super::Relay;
use super::registry::Lookup;
use crate::config::{OfflinePolicy, ServerConfig};

/// A peer whose channels could not be fetched for two sync intervals (and
/// at least this long) is left out of routes and forwarding, even while
/// the gossip still calls it alive (a frozen process answers neither).
/// With one fetch per interval this stays within the max(3 × interval,
/// 10 s) in which a dead replica must leave the routes.
const STALE_AFTER_MIN: Duration = Duration::from_secs(5);

/// Where a webhook for a channel this replica does not hold should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the replica serving at this `server_url`, which holds it.
    Peer(String),
    /// Nobody holds it; it exists (with its own policy, if a replica knows it).
    Offline(Option<OfflinePolicy>),
    /// No replica knows the channel.
    Unknown,
}

/// This replica's place in the cluster.
#[derive(Debug)]
pub struct Cluster {
    server_url: String,
    membership: Option<Membership>,
    peers: Peers,
    key: ForwardKey,
    sync_interval: Duration,
    /// Set after the first round of joins (at once without gossip).
    joined: AtomicBool,
    /// Channels whose queue is being handed over right now.
    handoffs: Mutex<HashSet<Uuid>>,
    stop: CancellationToken,
}

impl Cluster {
    /// Works out this replica's `server_url` (its HTTP listener is at
    /// `local`) and, when peers are configured, binds the gossip port.
    ///
    /// # Errors
    ///
    /// When an address in `[cluster]` is unusable or the gossip port
    /// cannot be bound.
    pub async fn start(config: &ServerConfig, local: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let cluster = &config.cluster;
        let clustered = !cluster.peers.is_empty() || !cluster.peer_domain.is_empty();
        let advertise = advertise_ip(&cluster.advertise_addr, local.ip(), clustered)?;
        let server_url = format!("http://{}", SocketAddr::new(advertise, local.port()));
        let membership = if clustered {
            let bind: IpAddr = cluster.bind_addr.parse().with_context(|| {
                format!(
                    "cluster.bind_addr {:?} is not an IP address; set it to one (0.0.0.0 for all)",
                    cluster.bind_addr
                )
            })?;
            let port = cluster.memberlist_port;
            let settings = Settings {
                name: node_name(advertise),
                bind: SocketAddr::new(bind, port),
                advertise: SocketAddr::new(advertise, port),
                server_url: server_url.clone(),
                secret: (!cluster.secret.is_empty()).then(|| cluster.secret.clone()),
            };
            let membership = Membership::start(settings).await?;
            info!(node = membership.name(), %server_url, gossip = %SocketAddr::new(bind, port), "cluster gossip started");
            Some(membership)
        } else {
            None
        };
        let interval = cluster.sync_interval.max(Duration::from_millis(100));
        Ok(Arc::new(Cluster {
            server_url,
            joined: AtomicBool::new(membership.is_none()),
            membership,
            peers: Peers::new((interval * 2).max(STALE_AFTER_MIN)),
            key: ForwardKey::new(cluster.secret.expose(), config.auth.jwt_secret.expose()),
            sync_interval: interval,
            handoffs: Mutex::new(HashSet::new()),
            stop: CancellationToken::new(),
        }))
    }

    /// `http://{advertise_addr}:{port}`: where the others reach this replica.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Whether this replica gossips with peers.
    pub fn is_clustered(&self) -> bool {
        self.membership.is_some()
    }

    /// Whether the first round of joins is done (always, without peers).
    pub fn is_joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    /// Starts the sync task: joins, peer channels, hand-overs, every
    /// `sync_interval`, until [`Cluster::leave`].
    pub fn spawn(self: &Arc<Self>, relay: Arc<Relay>) -> JoinHandle<()> {
        tokio::spawn(self.clone().run(relay))
    }

    /// Stops syncing and tells the peers this replica leaves, so that they
    /// drop it from their routes at once.
    pub async fn leave(&self) {
        self.stop.cancel();
        if let Some(membership) = &self.membership {
            membership.leave().await;
            info!("left the cluster");
        }
    }

    /// Closes the gossip port.
    pub async fn shutdown(&self) {
        if let Some(membership) = &self.membership {
            membership.shutdown().await;
        }
    }

    /// Where a webhook for `channel`, which no client holds here, goes.
    /// `known_here` says whether this replica knows the channel.
    pub async fn route(&self, relay: &Relay, channel: Uuid, known_here: bool) -> Route {
        if let Some(holder) = self.peers.holder(channel) {
            return Route::Peer(holder);
        }
        if self.membership.is_none() {
            return if known_here {
                Route::Offline(None)
            } else {
                Route::Unknown
            };
        }
        let secret = relay.config().cluster.secret.clone();
        let located = self.peers.locate(channel, bearer(&secret)).await;
        if let Some(holder) = located.holder {
            return Route::Peer(holder);
        }
        if located.known || known_here || self.peers.remembers(channel) {
            Route::Offline(located.offline)
        } else {
            Route::Unknown
        }
    }

    /// Sends a request to the replica in `outbound` and waits for the head
    /// of its answer.
    ///
    /// # Errors
    ///
    /// When the peer cannot be reached, fails, or stays silent; the body
    /// comes back when it can still be handled here.
    pub async fn send(
        &self,
        outbound: &Outbound<'_>,
        body: PeerBody,
        request_timeout: Duration,
    ) -> Result<http::Response<Incoming>, Failed> {
        let sent = forward::send(&self.key, outbound, body, request_timeout).await;
        if let Err(failed) = &sent {
            forward::log_failure(outbound.server_url, outbound.channel, failed);
        }
        sent
    }

    /// Checks the marker of a request that says another replica forwarded
    /// it. A server without peers takes no forwarded requests (its key
    /// may be derived from nothing secret): `Ok(None)`, and the marker is
    /// dropped with the sender's other `X-Wow-Peer*` headers.
    ///
    /// # Errors
    ///
    /// When the marker is malformed, stale, or signed with another key.
    pub fn verify(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<Option<PeerRequest>, MarkerError> {
        if self.membership.is_none() {
            return Ok(None);
        }
        self.key
            .verify(method, uri, headers, std::time::SystemTime::now())
    }

    /// `GET /internal/channels`.
    pub fn channel_list(&self, relay: &Relay) -> ChannelList {
        let (mut known, mut attached) = relay.registry().ids();
        known.sort_unstable();
        attached.sort_unstable();
        ChannelList {
            ws_channels: known,
            webhook_channels: attached,
            server_url: self.server_url.clone(),
        }
    }

    /// `GET /internal/channels/{id}`.
    pub fn channel_state(&self, relay: &Relay, channel: Uuid) -> ChannelState {
        let (known, attached, offline) = match relay.registry().lookup(channel) {
            Lookup::Unknown => (false, false, None),
            Lookup::Offline { offline } => (true, false, offline),
            Lookup::Attached { offline, .. } => (true, true, offline),
        };
        ChannelState {
            known,
            attached,
            offline: offline.map(|policy| policy.as_str().to_owned()),
        }
    }

    /// `GET /traefik-config`: routes for every alive replica's channels.
    pub async fn traefik_config(&self, relay: &Relay) -> serde_json::Value {
        let own = self.channel_list(relay);
        let mut replicas = vec![Holdings {
            server_url: own.server_url,
            known: own.ws_channels,
            attached: own.webhook_channels,
        }];
        if let Some(membership) = &self.membership {
            let alive = membership.alive().await;
            let names: Vec<&str> = alive
                .iter()
                .filter(|member| member.name != membership.name())
                .map(|member| member.name.as_str())
                .collect();
            replicas.extend(self.peers.holdings(&names));
        }
        traefik::dynamic_config(&replicas)
    }

    async fn run(self: Arc<Self>, relay: Arc<Relay>) {
        let mut known: BTreeSet<(String, String)> = BTreeSet::new();
        loop {
            if let Some(membership) = &self.membership {
                // A round waits on DNS and peers: leaving must not wait for it.
                tokio::select! {
                    () = self.sync(&relay, membership, &mut known) => {}
                    () = self.stop.cancelled() => return,
                }
            }
            handoff::supervise(&relay, &self);
            tokio::select! {
                () = tokio::time::sleep(self.sync_interval) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// One round: join new peers, log who came and went, fetch channels.
    async fn sync(
        &self,
        relay: &Relay,
        membership: &Membership,
        known: &mut BTreeSet<(String, String)>,
    ) {
        let config = relay.config();
        let candidates = discover(&config.cluster).await;
        let answered = membership.join(&candidates).await;
        let alive = membership.alive().await;
        let others: Vec<Member> = alive
            .into_iter()
            .filter(|member| member.name != membership.name())
            .collect();
        if !self.joined.swap(true, Ordering::Relaxed) {
            info!(
                candidates = candidates.len(),
                answered,
                peers = others.len(),
                "joined the cluster"
            );
        }
        log_changes(known, &others);

        let secret = config.cluster.secret.clone();
        self.peers.refresh(&others, bearer(&secret)).await;
        self.peers.forget_older_than(config.channels.idle_ttl);
    }

    /// Marks `channel` as being handed over; false if it already is.
    fn claim_handoff(&self, channel: Uuid) -> bool {
        self.lock_handoffs().insert(channel)
    }

    fn release_handoff(&self, channel: Uuid) {
        self.lock_handoffs().remove(&channel);
    }

    fn lock_handoffs(&self) -> MutexGuard<'_, HashSet<Uuid>> {
        // Nothing panics while holding this lock.
        self.handoffs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The bearer for internal requests, if a cluster secret is set.
fn bearer(secret: &crate::Secret) -> Option<&str> {
    (!secret.is_empty()).then(|| secret.expose())
}

/// Logs peers that joined or left since the last round.
fn log_changes(known: &mut BTreeSet<(String, String)>, others: &[Member]) {
    let now: BTreeSet<(String, String)> = others
        .iter()
        .map(|member| (member.name.clone(), member.server_url.clone()))
        .collect();
    for (node, server_url) in now.difference(known) {
        info!(%node, %server_url, "replica joined");
    }
    for (node, server_url) in known.difference(&now) {
        info!(%node, %server_url, "replica gone");
    }
    *known = now;
}
