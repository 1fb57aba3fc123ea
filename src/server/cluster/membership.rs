//! Gossip membership through memberlist. This is the only module that
//! names the crate (its API is being rewritten for 0.9): the rest of the
//! relay sees [`Membership`] and [`Member`].
//!
//! Each replica gossips under a name unique to its process and carries its
//! `server_url` as node metadata, so every member knows where the others
//! serve HTTP. With a cluster secret, its SHA-256 is the AES-256 key of
//! every gossip message, and both incoming and outgoing verification are
//! on: without both, memberlist would still admit a node with another key.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use futures::future::join_all;
use memberlist::Options;
use memberlist::delegate::{CompositeDelegate, NodeDelegate, VoidDelegate};
use memberlist::net::NetTransportOptions;
use memberlist::proto::{
    ChecksumAlgorithm, EncryptionAlgorithm, MaybeResolvedAddress, Meta, NodeId, SecretKey, State,
};
use memberlist::tokio::{TokioSocketAddrResolver, TokioTcp, TokioTcpMemberlist};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::Secret;

/// A leave waits at most this long for its broadcast to go out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

type Void = VoidDelegate<NodeId, SocketAddr>;
type Delegate = CompositeDelegate<NodeId, SocketAddr, Void, Void, Void, Void, Advertised>;
type List = TokioTcpMemberlist<NodeId, TokioSocketAddrResolver, Delegate>;

/// What a replica needs to take part in the gossip.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This process's node name.
    pub name: String,
    /// Where the gossip listener binds (TCP and UDP).
    pub bind: SocketAddr,
    /// The gossip address other replicas reach this one at.
    pub advertise: SocketAddr,
    /// `http://{advertise_addr}:{port}`, carried as node metadata.
    pub server_url: String,
    /// The cluster secret, if any: its SHA-256 keys the gossip.
    pub secret: Option<Secret>,
}

/// A replica the gossip reports alive (or suspected, not yet dead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node name.
    pub name: String,
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// Where it serves HTTP.
    pub server_url: String,
}

/// This replica's seat in the gossip.
pub struct Membership {
    list: List,
    name: String,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Hands memberlist our node metadata.
struct Advertised(Meta);

impl NodeDelegate for Advertised {
    async fn node_meta(&self, _limit: usize) -> Meta {
        self.0.clone()
    }
}

impl Membership {
    /// Binds the gossip port and starts gossiping (alone until [`join`]).
    ///
    /// # Errors
    ///
    /// When the port cannot be bound or the settings are unusable.
    ///
    /// [`join`]: Membership::join
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let id = NodeId::new(&settings.name).map_err(|error| anyhow!("bad node name: {error}"))?;
        let meta = Meta::try_from(settings.server_url.as_str())
            .map_err(|error| anyhow!("server_url too long for node metadata: {error}"))?;
        let delegate = CompositeDelegate::new().with_node_delegate(Advertised(meta));
        let mut transport =
            NetTransportOptions::<NodeId, TokioSocketAddrResolver, TokioTcp>::new(id)
                .with_advertise_address(settings.advertise);
        transport.add_bind_address(settings.bind);
        let options = gossip_options(settings.secret.as_ref().map(Secret::expose));
        let list = List::with_delegate(delegate, transport, options)
            .await
            .map_err(|error| {
                anyhow!(
                    "cannot start cluster gossip on {}: {error}; free the port or pick another \
                     with cluster.memberlist_port (--memberlist-port)",
                    settings.bind
                )
            })?;
        Ok(Membership {
            list,
            name: settings.name,
        })
    }

    /// This replica's node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Contacts each candidate that is not already a member; returns how
    /// many answered.
    pub async fn join(&self, candidates: &[SocketAddr]) -> usize {
        let own = *self.list.advertise_address();
        let members: Vec<SocketAddr> = self.alive().await.iter().map(|m| m.gossip).collect();
        let fresh: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|candidate| *candidate != own && !members.contains(candidate))
            .collect();
        if fresh.is_empty() {
            return 0;
        }
        // One join per candidate (`join_many` is not `Send`).
        let joins = fresh.iter().map(|candidate| async move {
            let joined = self
                .list
                .join(MaybeResolvedAddress::Resolved(*candidate))
                .await;
            if let Err(error) = &joined {
                debug!(peer = %candidate, error = %error, "cluster peer did not answer");
            }
            joined.is_ok()
        });
        join_all(joins)
            .await
            .into_iter()
            .filter(|joined| *joined)
            .count()
    }

    /// Every member not known to be dead or gone, this replica included.
    pub async fn alive(&self) -> Vec<Member> {
        self.list
            .online_members()
            .await
            .iter()
            .filter(|state| matches!(state.state(), State::Alive | State::Suspect))
            .map(|state| Member {
                name: state.id().as_str().to_owned(),
                gossip: *state.address(),
                server_url: String::from_utf8_lossy(state.meta().as_bytes()).into_owned(),
            })
            .collect()
    }

    /// Tells the others this replica is leaving (they drop it at once
    /// instead of waiting for a failed probe).
    pub async fn leave(&self) {
        if let Err(error) = self.list.leave(LEAVE_TIMEOUT).await {
            debug!(error = %error, "leave broadcast did not complete");
        }
    }

    /// Stops gossiping and closes the port.
    pub async fn shutdown(&self) {
        if let Err(error) = self.list.shutdown().await {
            debug!(error = %error, "gossip did not shut down cleanly");
        }
    }
}

/// LAN timings, CRC32 on every packet, and with a secret: AES-256-GCM with
/// the secret's SHA-256, verified both ways.
fn gossip_options(secret: Option<&str>) -> Options {
    let options = Options::lan().with_checksum_algo(ChecksumAlgorithm::Crc32);
    let Some(secret) = secret else {
        return options;
    };
    let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    options
        .with_primary_key(SecretKey::Aes256(key))
        .with_encryption_algo(EncryptionAlgorithm::NoPadding)
        .with_gossip_verify_incoming(true)
        .with_gossip_verify_outgoing(true)
}
