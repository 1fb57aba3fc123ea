//! Peer forwarding: a webhook that reaches a replica not holding its
//! channel goes, once, to the replica that does.
//!
//! The first replica builds the request as the app will see it (hop-by-hop
//! headers gone, `X-Forwarded-*` for the original sender, a delivery id and
//! arrival time) and sends exactly that to the holder, streaming the body
//! and then the answer back. The request carries `X-Wow-Peer`, an HMAC over
//! the request line, the delivery's own fields and every forwarding header,
//! keyed from the cluster secret (or, without one, the `jwt_secret` every
//! replica shares) and stamped with the time. The holder believes such a
//! request's forwarding headers as they are and never forwards it again;
//! a request whose marker does not verify is refused. So a request crosses
//! at most one hop, and no sender can forge where a webhook came from.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{info, warn};
use uuid::Uuid;

use super::marker::{
    ForwardKey, Kind, Signed, X_WOW_PEER, X_WOW_PEER_DELIVERY, X_WOW_PEER_RECEIVED_AT, header_text,
    is_peer_header, unix_seconds,
};
use crate::idle::Progress;
use crate::protocol::{INITIAL_WINDOW, RequestHead};

/// On the holder's answer to a forwarded request: `delivered` (the app's
/// own answer), `queued`, `refused` (the client refused it) or `not-held`.
pub const X_WOW_OUTCOME: HeaderName = HeaderName::from_static("x-wow-outcome");

/// Connecting to a peer may take this long before the webhook is handled
/// here instead.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// After the request body last moved, the holder answers within its own
/// `request_timeout`; this much more is allowed for its answer to arrive.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// A body on its way to a peer (or back into the local queue).
pub type PeerBody = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Any error of a body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request to send to the replica at `server_url`.
#[derive(Debug)]
pub struct Outbound<'a> {
    /// The holder's `http://host:port`.
    pub server_url: &'a str,
    /// The channel the webhook is for.
    pub channel: Uuid,
    /// The request as the app will see it.
    pub head: &'a RequestHead,
    /// Live webhook or queued delivery.
    pub kind: Kind,
}

/// Why a forward did not bring back an answer.
pub struct Failed {
    /// What went wrong, for the log.
    pub reason: String,
    /// The whole body, when it can still be handled here (the peer was
    /// unreachable, or failed before taking more than one window of it).
    pub body: Option<PeerBody>,
}

/// Sends `outbound` with `body` to its peer and waits for the answer's
/// head; the body of the answer streams on.
///
/// # Errors
///
/// When the peer cannot be reached, fails, or stays silent past
/// `request_timeout` (plus a margin) after the body last moved.
pub async fn send(
    key: &ForwardKey,
    outbound: &Outbound<'_>,
    body: PeerBody,
    request_timeout: Duration,
) -> Result<Response<Incoming>, Failed> {
    let (authority, request_head) = match build(key, outbound) {
        Ok(built) => built,
        Err(reason) => {
            return Err(Failed {
                reason,
                body: Some(body),
            });
        }
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&authority)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(failed_unsent(format!("cannot connect: {error}"), body)),
        Err(_) => return Err(failed_unsent("connect timed out".to_owned(), body)),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(handshake) => handshake,
            Err(error) => return Err(failed_unsent(format!("handshake failed: {error}"), body)),
        };
    let driver = tokio::spawn(connection);

    let progress = Progress::new();
    let kept = Arc::new(Mutex::new(Kept::default()));
    let tee = Tee {
        inner: Some(body),
        kept: kept.clone(),
        progress: progress.clone(),
    };
    let frames = tee.map(|chunk| chunk.map(Frame::data));
    let request = request_head.body(StreamBody::new(frames));
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            driver.abort();
            return Err(Failed {
                reason: format!("cannot build the request: {error}"),
                body: None,
            });
        }
    };

    let answer = tokio::select! {
        answer = sender.send_request(request) => answer.map_err(|error| error.to_string()),
        () = progress.idle_for(request_timeout + ANSWER_MARGIN) => Err("no answer in time".to_owned()),
    };
    drop(sender);
    match answer {
        Ok(response) => Ok(response),
        Err(reason) => {
            // The connection task owns what is left of the body: once it
            // ends, the body comes back to `kept` if it can be replayed.
            driver.abort();
            let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
            let body = lock(&kept).replay();
            Err(Failed { reason, body })
        }
    }
}

fn failed_unsent(reason: String, body: PeerBody) -> Failed {
    Failed {
        reason,
        body: Some(body),
    }
}

/// The peer's `host:port` and the request head, signed.
fn build(
    key: &ForwardKey,
    outbound: &Outbound<'_>,
) -> Result<(String, http::request::Builder), String> {
    let base: Uri = outbound
        .server_url
        .parse()
        .map_err(|_| "peer server_url is not a URL".to_owned())?;
    let authority = base
        .authority()
        .ok_or_else(|| "peer server_url has no host".to_owned())?
        .to_string();
    let head = outbound.head;
    let mut target = format!("/webhook/{}{}", outbound.channel, head.path);
    if let Some(query) = &head.query {
        target.push('?');
        target.push_str(query);
    }
    let delivery_id = head.delivery_id.unwrap_or_else(Uuid::new_v4);
    let parts = Signed {
        method: head.method.as_str(),
        target: &target,
        delivery_id,
        received_at_ms: head.received_at_ms,
        headers: &head.headers,
    };
    let at = unix_seconds(SystemTime::now());
    let marker = key.sign(outbound.kind, at, &parts);

    let mut builder = Request::builder()
        .method(head.method.clone())
        .uri(target)
        .header(header::HOST, &authority);
    for (name, value) in &head.headers {
        if !is_peer_header(name) {
            builder = builder.header(name, value);
        }
    }
    builder = builder
        .header(X_WOW_PEER, marker)
        .header(X_WOW_PEER_DELIVERY, delivery_id.to_string());
    if let Some(ms) = head.received_at_ms {
        builder = builder.header(X_WOW_PEER_RECEIVED_AT, ms.to_string());
    }
    Ok((authority, builder))
}

/// What a [`Tee`] kept of the body it passed on.
#[derive(Default)]
struct Kept {
    /// Every chunk passed on, while they fit in one window.
    sent: Option<Vec<Bytes>>,
    /// Bytes passed on.
    total: usize,
    /// Set when more than a window went out: no replay.
    overflowed: bool,
    /// The unread rest, handed back when the tee is dropped.
    rest: Option<PeerBody>,
}

impl Kept {
    /// The whole body again, if nothing of it was lost.
    fn replay(&mut self) -> Option<PeerBody> {
        if self.overflowed {
            return None;
        }
        let rest = self.rest.take()?;
        let sent = self.sent.take().unwrap_or_default();
        Some(Box::pin(
            futures::stream::iter(sent.into_iter().map(Ok)).chain(rest),
        ))
    }
}

/// Passes a body on, keeping the first window of it so that a request a
/// failed peer may never have seen can still be handled here.
struct Tee {
    inner: Option<PeerBody>,
    kept: Arc<Mutex<Kept>>,
    progress: Progress,
}

impl Stream for Tee {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            this.progress.touch();
            let mut kept = lock(&this.kept);
            kept.total += chunk.len();
            if kept.total > INITIAL_WINDOW as usize {
                kept.overflowed = true;
                kept.sent = None;
            } else if !kept.overflowed {
                kept.sent.get_or_insert_with(Vec::new).push(chunk.clone());
            }
        }
        polled
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            lock(&self.kept).rest = Some(inner);
        }
    }
}

fn lock(kept: &Mutex<Kept>) -> MutexGuard<'_, Kept> {
    // Nothing panics while holding this lock.
    kept.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the holder said happened to a forwarded request.
pub fn outcome(response: &Response<Incoming>) -> Option<&str> {
    header_text(response.headers(), &X_WOW_OUTCOME)
}

/// Logs a failed forward: at `info` when the request is handled here
/// instead, at `warn` when it is lost for the sender (who gets 502).
pub fn log_failure(server_url: &str, channel: Uuid, failed: &Failed) {
    if failed.body.is_some() {
        info!(%channel, peer = %server_url, reason = %failed.reason, "holding replica unreachable: keeping the request here");
    } else {
        warn!(%channel, peer = %server_url, reason = %failed.reason, "holding replica failed mid-request");
    }
}

/// Marks the answer to a forwarded request with what happened to it.
pub fn set_outcome(headers: &mut HeaderMap, outcome: &'static str) {
    headers.insert(X_WOW_OUTCOME, HeaderValue::from_static(outcome));
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::super::marker::{MarkerError, peer_head};
    use super::*;

    fn signed_request(key: &ForwardKey, kind: Kind) -> (Method, Uri, HeaderMap) {
        let mut head = RequestHead::new(Method::POST, "/a%2Fb");
        head.query = Some("x=1&x=2".to_owned());
        head.delivery_id = Some(Uuid::new_v4());
        head.received_at_ms = Some(1_700_000_000_000);
        head.headers
            .append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        head.headers.append(
            "x-forwarded-host",
            HeaderValue::from_static("hooks.example.com"),
        );
        let channel = Uuid::new_v4();
        let outbound = Outbound {
            server_url: "http://127.0.0.2:8080",
            channel,
            head: &head,
            kind,
        };
        let (authority, builder) = build(key, &outbound).unwrap();
        assert_eq!(authority, "127.0.0.2:8080");
        let request = builder.body(()).unwrap();
        assert_eq!(
            request.uri().to_string(),
            format!("/webhook/{channel}/a%2Fb?x=1&x=2")
        );
        let (parts, ()) = request.into_parts();
        (parts.method, parts.uri, parts.headers)
    }

    #[test]
    fn a_signed_request_verifies_with_its_fields() {
        let key = ForwardKey::new("cluster", "jwt");
        let (method, uri, headers) = signed_request(&key, Kind::Handoff);
        let peer = key
            .verify(&method, &uri, &headers, SystemTime::now())
            .unwrap()
            .unwrap();
        assert_eq!(peer.kind, Kind::Handoff);
        assert_eq!(peer.received_at_ms, Some(1_700_000_000_000));
        let head = peer_head(method, "/a%2Fb", headers, &uri, peer);
        assert!(head.redelivered);
        assert_eq!(head.query.as_deref(), Some("x=1&x=2"));
        assert!(head.headers.keys().all(|name| !is_peer_header(name)));
        assert!(head.headers.get(header::HOST).is_none());
        assert_eq!(head.headers["x-forwarded-for"], "203.0.113.9");
    }

    #[test]
    fn forged_changed_or_stale_markers_are_refused() {
        let key = ForwardKey::new("cluster", "jwt");
        let now = SystemTime::now();

        let other = ForwardKey::new("another", "jwt");
        let (method, uri, headers) = signed_request(&other, Kind::Live);
        assert_eq!(
            key.verify(&method, &uri, &headers, now),
            Err(MarkerError::BadSignature)
        );

        let (method, uri, mut headers) = signed_request(&key, Kind::Live);
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        assert_eq!(
            key.verify(&method, &uri, &headers, now),
            Err(MarkerError::BadSignature)
        );

        let (method, uri, headers) = signed_request(&key, Kind::Live);
        let later = now + Duration::from_secs(3600);
        assert_eq!(
            key.verify(&method, &uri, &headers, later),
            Err(MarkerError::Expired)
        );

        let (_, uri, headers) = signed_request(&key, Kind::Live);
        assert_eq!(
            key.verify(&Method::PUT, &uri, &headers, now),
            Err(MarkerError::BadSignature)
        );

        let mut bare = HeaderMap::new();
        assert_eq!(key.verify(&Method::POST, &uri, &bare, now), Ok(None));
        bare.insert(X_WOW_PEER, HeaderValue::from_static("v1 live 1 00"));
        assert_eq!(
            key.verify(&Method::POST, &uri, &bare, now),
            Err(MarkerError::Malformed)
        );
    }

    #[test]
    fn without_a_cluster_secret_the_jwt_secret_keys_the_marker() {
        let (method, uri, headers) = signed_request(&ForwardKey::new("", "jwt"), Kind::Live);
        let same = ForwardKey::new("", "jwt");
        assert!(
            same.verify(&method, &uri, &headers, SystemTime::now())
                .is_ok()
        );
        let other = ForwardKey::new("", "other-jwt");
        assert!(
            other
                .verify(&method, &uri, &headers, SystemTime::now())
                .is_err()
        );
        assert!(!format!("{same:?}").contains("jwt"));
    }
}
