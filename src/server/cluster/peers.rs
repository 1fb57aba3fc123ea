//! What the other replicas hold. Every `sync_interval` each alive peer's
//! `GET /internal/channels` is fetched into a cache, so that
//! `/traefik-config` and the choice of a webhook's replica never wait on a
//! peer; a webhook the cache cannot place asks every peer about its one
//! channel (`GET /internal/channels/{id}`), briefly.

use std::collections::{HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::debug;
use uuid::Uuid;

use super::membership::Member;
use super::traefik::Holdings;
use crate::config::OfflinePolicy;

/// A peer gets this long to answer `/internal/channels` (the refresh runs
/// in the background: nobody waits for it).
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// A peer gets this long to answer a single-channel lookup, which a
/// sender's webhook is waiting for.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(800);

/// `GET /internal/channels`: what one replica holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelList {
    /// Channels the replica knows.
    pub ws_channels: Vec<Uuid>,
    /// Channels a client holds on the replica.
    pub webhook_channels: Vec<Uuid>,
    /// Where the replica serves HTTP.
    pub server_url: String,
}

/// `GET /internal/channels/{id}`: what one replica knows of one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// The replica knows the channel.
    pub known: bool,
    /// A client holds the channel there.
    pub attached: bool,
    /// The channel's own offline policy, when its client stated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<String>,
}

/// Where the cluster says a channel is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Located {
    /// The `server_url` of a replica holding it.
    pub holder: Option<String>,
    /// Some replica knows the channel.
    pub known: bool,
    /// The channel's own offline policy, if a replica knows it.
    pub offline: Option<OfflinePolicy>,
}

/// One peer as last fetched.
#[derive(Debug)]
struct Peer {
    server_url: String,
    known: HashSet<Uuid>,
    attached: HashSet<Uuid>,
    /// When it last answered; `None` before its first answer.
    fetched: Option<Instant>,
}

/// The cache of every peer's channels.
#[derive(Debug)]
pub struct Peers {
    http: reqwest::Client,
    /// By node name.
    peers: RwLock<HashMap<String, Peer>>,
    /// Every channel a peer has listed since this process started, and when
    /// last: a webhook for one whose replica died is queued here, not 404.
    remembered: RwLock<HashMap<Uuid, Instant>>,
    /// A peer that has not answered for this long is left out.
    stale_after: Duration,
}

impl Peers {
    /// An empty cache; peers silent for `stale_after` are left out.
    pub fn new(stale_after: Duration) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Peers {
            http,
            peers: RwLock::new(HashMap::new()),
            remembered: RwLock::new(HashMap::new()),
            stale_after,
        }
    }

    /// Fetches every peer in `others` at once (each for at most
    /// [`FETCH_TIMEOUT`]) and forgets those no longer alive.
    pub async fn refresh(&self, others: &[Member], bearer: Option<&str>) {
        let fetches = others.iter().map(|member| async move {
            let url = format!("{}/internal/channels", member.server_url);
            let list: Option<ChannelList> = self.get_json(&url, bearer, FETCH_TIMEOUT).await;
            (member, list)
        });
        let answers = join_all(fetches).await;

        let now = Instant::now();
        let mut peers = self.write_peers();
        peers.retain(|name, _| others.iter().any(|member| &member.name == name));
        let mut listed = Vec::new();
        for (member, list) in answers {
            let peer = peers.entry(member.name.clone()).or_insert_with(|| Peer {
                server_url: member.server_url.clone(),
                known: HashSet::new(),
                attached: HashSet::new(),
                fetched: None,
            });
            let Some(list) = list else {
                debug!(peer = %member.server_url, "peer did not list its channels");
                continue;
            };
            listed.extend(list.ws_channels.iter().copied());
            peer.known = list.ws_channels.into_iter().collect();
            peer.attached = list.webhook_channels.into_iter().collect();
            peer.server_url = member.server_url.clone();
            peer.fetched = Some(now);
        }
        drop(peers);
        let mut remembered = self.write_remembered();
        for channel in listed {
            remembered.insert(channel, now);
        }
    }

    /// Forgets remembered channels no peer has listed for `ttl`.
    pub fn forget_older_than(&self, ttl: Duration) {
        let now = Instant::now();
        self.write_remembered()
            .retain(|_, seen| now.duration_since(*seen) < ttl);
    }

    /// What each peer named in `alive` that answered recently holds.
    pub fn holdings(&self, alive: &[&str]) -> Vec<Holdings> {
        self.read_peers()
            .iter()
            .filter(|(name, peer)| alive.contains(&name.as_str()) && self.is_fresh(peer))
            .map(|(_, peer)| peer)
            .map(|peer| Holdings {
                server_url: peer.server_url.clone(),
                known: peer.known.iter().copied().collect(),
                attached: peer.attached.iter().copied().collect(),
            })
            .collect()
    }

    /// The `server_url` of a peer that held `channel` at its last answer.
    pub fn holder(&self, channel: Uuid) -> Option<String> {
        let peers = self.read_peers();
        let mut holders: Vec<&Peer> = peers
            .values()
            .filter(|peer| self.is_fresh(peer) && peer.attached.contains(&channel))
            .collect();
        holders.sort_by_key(|peer| std::cmp::Reverse(peer.fetched));
        holders.first().map(|peer| peer.server_url.clone())
    }

    /// Whether some peer has listed `channel` since this process started.
    pub fn remembers(&self, channel: Uuid) -> bool {
        self.read_remembered().contains_key(&channel)
    }

    /// Asks every recently answering peer about `channel` at once, each for
    /// at most [`LOOKUP_TIMEOUT`].
    pub async fn locate(&self, channel: Uuid, bearer: Option<&str>) -> Located {
        let urls: Vec<String> = self
            .read_peers()
            .values()
            .filter(|peer| self.is_fresh(peer))
            .map(|peer| peer.server_url.clone())
            .collect();
        let asks = urls.iter().map(|server_url| async move {
            let url = format!("{server_url}/internal/channels/{channel}");
            let state: Option<ChannelState> = self.get_json(&url, bearer, LOOKUP_TIMEOUT).await;
            (server_url, state)
        });
        let mut located = Located::default();
        for (server_url, state) in join_all(asks).await {
            let Some(state) = state else { continue };
            located.known |= state.known || state.attached;
            if located.offline.is_none() {
                located.offline = state.offline.and_then(|policy| policy.parse().ok());
            }
            if state.attached && located.holder.is_none() {
                located.holder = Some(server_url.clone());
            }
        }
        located
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        bearer: Option<&str>,
        limit: Duration,
    ) -> Option<T> {
        let mut request = self.http.get(url).timeout(limit);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            debug!(%url, status = response.status().as_u16(), "peer refused an internal request");
            return None;
        }
        response.json().await.ok()
    }

    fn is_fresh(&self, peer: &Peer) -> bool {
        peer.fetched
            .is_some_and(|fetched| fetched.elapsed() < self.stale_after)
    }

    fn read_peers(&self) -> RwLockReadGuard<'_, HashMap<String, Peer>> {
        // Nothing panics while holding these locks; keep serving if that changes.
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_peers(&self) -> RwLockWriteGuard<'_, HashMap<String, Peer>> {
        self.peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_remembered(&self) -> RwLockReadGuard<'_, HashMap<Uuid, Instant>> {
        self.remembered
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_remembered(&self) -> RwLockWriteGuard<'_, HashMap<Uuid, Instant>> {
        self.remembered
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
