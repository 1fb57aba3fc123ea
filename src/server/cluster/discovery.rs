//! Where the peers are: the gossip addresses to try each round (static
//! `peers`, every A record of `peer_domain`), this replica's advertised
//! address, and its node name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tracing::{debug, warn};
use uuid::Uuid;

/// Resolving one peer name may take this long.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The address other replicas reach this one at: `advertise_addr`, else
/// `$POD_IP`, else the listen address when it names one, else the first
/// non-loopback IPv4 of this host.
pub fn advertise_ip(configured: &str, listen: IpAddr, clustered: bool) -> anyhow::Result<IpAddr> {
    if !configured.is_empty() {
        return configured.parse().with_context(|| {
            format!("cluster.advertise_addr {configured:?} is not an IP address; set it to this replica's address")
        });
    }
    if let Some(pod_ip) = std::env::var("POD_IP").ok().filter(|ip| !ip.is_empty()) {
        return pod_ip.parse().with_context(|| {
            format!("POD_IP {pod_ip:?} is not an IP address; fix the pod spec or set cluster.advertise_addr")
        });
    }
    if !listen.is_unspecified() {
        return Ok(listen);
    }
    let found = getifs::local_ipv4_addrs().ok().and_then(|addrs| {
        addrs
            .iter()
            .map(|net| net.addr())
            .find(|ip| !ip.is_loopback())
    });
    match found {
        Some(ip) => Ok(IpAddr::V4(ip)),
        None if clustered => anyhow::bail!(
            "cannot tell this replica's address (no POD_IP, no non-loopback IPv4); set cluster.advertise_addr"
        ),
        None => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

/// A node name unique to this process, readable in logs.
pub fn node_name(advertise: IpAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty() && host.len() < 200)
        .unwrap_or_else(|| advertise.to_string());
    let unique = Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &unique[..8])
}

/// Every gossip address to try: each static peer, and every A record of
/// `peer_domain` (re-resolved each round, as pods come and go).
pub async fn discover(cluster: &crate::config::Cluster) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for peer in &cluster.peers {
        let (host, port) = peer_target(peer, cluster.memberlist_port);
        found.extend(resolve(&host, port, false).await);
    }
    if !cluster.peer_domain.is_empty() {
        found.extend(resolve(&cluster.peer_domain, cluster.memberlist_port, true).await);
    }
    found.sort_unstable();
    found.dedup();
    found
}

async fn resolve(host: &str, port: u16, ipv4_only: bool) -> Vec<SocketAddr> {
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.filter(|addr| !ipv4_only || addr.is_ipv4()).collect(),
        Ok(Err(error)) => {
            debug!(%host, error = %error, "cannot resolve a cluster peer");
            Vec::new()
        }
        Err(_) => {
            warn!(%host, timeout = ?RESOLVE_TIMEOUT, "resolving a cluster peer timed out");
            Vec::new()
        }
    }
}

/// `host:port`, `host` (the gossip port), `[v6]:port` or a bare IPv6.
fn peer_target(peer: &str, default_port: u16) -> (String, u16) {
    let peer = peer.trim();
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    if let Ok(ip) = peer.parse::<IpAddr>() {
        return (ip.to_string(), default_port);
    }
    match peer.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host.to_owned(), port),
            Err(_) => (peer.to_owned(), default_port),
        },
        _ => (peer.to_owned(), default_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_read_with_or_without_a_port() {
        for (peer, expected) in [
            ("10.0.0.1:7000", ("10.0.0.1", 7000)),
            ("10.0.0.1", ("10.0.0.1", 7946)),
            ("wow-0.wow:7000", ("wow-0.wow", 7000)),
            ("wow-0.wow", ("wow-0.wow", 7946)),
            ("[::1]:7000", ("::1", 7000)),
            ("::1", ("::1", 7946)),
        ] {
            let (host, port) = peer_target(peer, 7946);
            assert_eq!((host.as_str(), port), expected, "{peer}");
        }
    }

    #[test]
    fn the_advertised_address_prefers_the_configured_one() {
        let any = IpAddr::from([0, 0, 0, 0]);
        let listen = IpAddr::from([127, 0, 0, 3]);
        assert_eq!(
            advertise_ip("10.1.2.3", listen, true).unwrap(),
            IpAddr::from([10, 1, 2, 3])
        );
        assert!(advertise_ip("not-an-ip", listen, true).is_err());
        if std::env::var_os("POD_IP").is_none() {
            assert_eq!(advertise_ip("", listen, true).unwrap(), listen);
            assert!(!advertise_ip("", any, false).unwrap().is_unspecified());
        }
    }

    #[test]
    fn node_names_differ_per_process_start() {
        let ip = IpAddr::from([127, 0, 0, 2]);
        assert_ne!(node_name(ip), node_name(ip));
    }
}
