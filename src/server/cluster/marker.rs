//! The marker of a forwarded request: `X-Wow-Peer: v1 <kind> <unix
//! seconds> <hmac>`, with the delivery's id and arrival time beside it.
//!
//! The HMAC covers the request line, the delivery's own fields and every
//! forwarding header, keyed from the cluster secret (or, without one, the
//! `jwt_secret` every replica shares), and is valid for [`MAX_SKEW`]. A
//! replica believes a request with a valid marker as it is (its
//! `X-Forwarded-*` are the first replica's, made for the original sender)
//! and never forwards it again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Uri};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::headers::{FORWARDING, retain, strip_hop_by_hop};
use crate::protocol::RequestHead;

/// The marker of a forwarded request: `v1 <kind> <unix seconds> <hmac>`.
pub const X_WOW_PEER: HeaderName = HeaderName::from_static("x-wow-peer");
/// The delivery id the first replica gave the request.
pub const X_WOW_PEER_DELIVERY: HeaderName = HeaderName::from_static("x-wow-peer-delivery");
/// When the first replica received it, in ms since the Unix epoch.
pub const X_WOW_PEER_RECEIVED_AT: HeaderName = HeaderName::from_static("x-wow-peer-received-at");

/// A marker older (or newer) than this is refused: replicas' clocks agree
/// far better, and a captured request cannot be replayed for long.
const MAX_SKEW: Duration = Duration::from_secs(300);

/// Why a request crossed to this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A sender's webhook, as it arrived at another replica.
    Live,
    /// A delivery from another replica's offline queue.
    Handoff,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Live => "live",
            Kind::Handoff => "handoff",
        }
    }
}

/// A forwarded request whose marker verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRequest {
    /// Live webhook or queued delivery.
    pub kind: Kind,
    /// The id the first replica gave it.
    pub delivery_id: Uuid,
    /// When the first replica received it.
    pub received_at_ms: Option<u64>,
}

/// Why a marker was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    /// Not `v1 <kind> <time> <hmac>`, or the delivery fields are missing.
    #[error("malformed peer marker")]
    Malformed,
    /// The time is too far from ours.
    #[error("peer marker too old or from the future")]
    Expired,
    /// The HMAC does not match: another secret, or a forgery.
    #[error("peer marker does not verify")]
    BadSignature,
}

/// The key that signs and checks markers.
#[derive(Clone)]
pub struct ForwardKey([u8; 32]);

impl std::fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardKey(***)")
    }
}

impl ForwardKey {
    /// Derives the key from the cluster secret, or from `jwt_secret` when
    /// there is no cluster secret (clustering requires that one).
    pub fn new(cluster_secret: &str, jwt_secret: &str) -> Self {
        let material = if cluster_secret.is_empty() {
            jwt_secret
        } else {
            cluster_secret
        };
        let mut mac = new_mac(material.as_bytes());
        mac.update(b"wow peer forwarding v1");
        ForwardKey(mac.finalize().into_bytes().into())
    }

    /// The `X-Wow-Peer` value for a request with these parts, made `at`.
    pub(super) fn sign(&self, kind: Kind, at: u64, parts: &Signed<'_>) -> String {
        let mac = self.mac(kind, at, parts);
        format!("v1 {} {at} {}", kind.as_str(), hex(&mac))
    }

    /// Checks a request's marker; `Ok(None)` when it carries none.
    ///
    /// # Errors
    ///
    /// When a marker is present but malformed, stale or forged.
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Option<PeerRequest>, MarkerError> {
        let Some(marker) = headers.get(&X_WOW_PEER) else {
            return Ok(None);
        };
        let marker = marker.to_str().map_err(|_| MarkerError::Malformed)?;
        let mut fields = marker.split(' ');
        let (Some("v1"), Some(kind), Some(at), Some(signature), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(MarkerError::Malformed);
        };
        let kind = match kind {
            "live" => Kind::Live,
            "handoff" => Kind::Handoff,
            _ => return Err(MarkerError::Malformed),
        };
        let at: u64 = at.parse().map_err(|_| MarkerError::Malformed)?;
        let delivery = header_text(headers, &X_WOW_PEER_DELIVERY).ok_or(MarkerError::Malformed)?;
        let delivery_id = Uuid::parse_str(delivery).map_err(|_| MarkerError::Malformed)?;
        let received = header_text(headers, &X_WOW_PEER_RECEIVED_AT);
        let received_at_ms = match received {
            Some(text) => Some(text.parse().map_err(|_| MarkerError::Malformed)?),
            None => None,
        };

        let now = unix_seconds(now);
        if now.abs_diff(at) > MAX_SKEW.as_secs() {
            return Err(MarkerError::Expired);
        }
        let target = uri.path_and_query().map_or("/", |target| target.as_str());
        let parts = Signed {
            method: method.as_str(),
            target,
            delivery_id,
            received_at_ms,
            headers,
        };
        let expected = hex(&self.mac(kind, at, &parts));
        if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
            return Err(MarkerError::BadSignature);
        }
        Ok(Some(PeerRequest {
            kind,
            delivery_id,
            received_at_ms,
        }))
    }

    fn mac(&self, kind: Kind, at: u64, parts: &Signed<'_>) -> Vec<u8> {
        let mut mac = new_mac(&self.0);
        let received = parts
            .received_at_ms
            .map_or_else(|| "-".to_owned(), |ms| ms.to_string());
        let line = format!(
            "v1\n{}\n{at}\n{}\n{}\n{}\n{received}\n",
            kind.as_str(),
            parts.method,
            parts.target,
            parts.delivery_id
        );
        mac.update(line.as_bytes());
        for name in &FORWARDING {
            for value in parts.headers.get_all(name) {
                mac.update(name.as_str().as_bytes());
                mac.update(b":");
                mac.update(value.as_bytes());
                mac.update(b"\n");
            }
        }
        mac.finalize().into_bytes().to_vec()
    }
}

/// What a marker vouches for.
pub(super) struct Signed<'a> {
    /// The request's method.
    pub method: &'a str,
    /// Its path and query, exactly as sent.
    pub target: &'a str,
    /// The delivery id the first replica gave it.
    pub delivery_id: Uuid,
    /// When the first replica received it.
    pub received_at_ms: Option<u64>,
    /// Its headers (only the forwarding ones are signed).
    pub headers: &'a HeaderMap,
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(super) fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

pub(super) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Whether a header belongs to the forwarding protocol between replicas
/// (removed from whatever a sender sends, and never shown to an app).
pub fn is_peer_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-wow-peer")
}

/// The head a verified forwarded request stands for: what the first
/// replica built, as it built it.
pub fn peer_head(
    method: Method,
    suffix: &str,
    mut headers: HeaderMap,
    uri: &Uri,
    peer: PeerRequest,
) -> RequestHead {
    strip_hop_by_hop(&mut headers);
    retain(&mut headers, |name| {
        name != header::HOST && !is_peer_header(name)
    });
    let mut head = RequestHead::new(method, suffix);
    head.query = uri.query().map(str::to_owned);
    head.headers = headers;
    head.delivery_id = Some(peer.delivery_id);
    head.received_at_ms = peer.received_at_ms;
    head.redelivered = peer.kind == Kind::Handoff;
    head
}
