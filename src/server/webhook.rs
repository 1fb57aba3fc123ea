//! `ANY /webhook/{id}[/rest][?query]`: a webhook in, through the tunnel, and
//! the app's own answer back to the sender.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Buf;
use futures::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use uuid::Uuid;
use warp::Reply;
use warp::reply::Response;

use super::Relay;
use super::http::{RequestMeta, error_response, set_retry_after};
use super::registry::Lookup;
use crate::headers::{FORWARDING, retain, strip_hop_by_hop};
use crate::idle::Progress;
use crate::protocol::{
    InboundBody, OpenError, OutgoingRequest, RequestHead, ResetCode, ResponseHead, StreamError,
    StreamHandle,
};

/// A sender whose body was refused gets this long to finish sending it, so
/// that it reads the 413 instead of a reset connection.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(30);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// How the upload of a request body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upload {
    /// Every byte went through the tunnel.
    Complete,
    /// The body grew past `max_body`.
    TooLarge,
    /// The sender's connection failed mid-body.
    SenderFailed,
    /// The stream was reset or the tunnel lost.
    TunnelClosed,
}

/// Handles one webhook request.
pub async fn handle<S, B>(
    channel: String,
    method: Method,
    headers: HeaderMap,
    meta: RequestMeta,
    body: S,
    relay: Arc<Relay>,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send + 'static,
{
    let Ok(channel) = Uuid::parse_str(&channel) else {
        return error_response(StatusCode::NOT_FOUND, "unknown channel");
    };
    let suffix = path_suffix(meta.uri.path());
    if has_dot_segment(suffix) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the path must not contain . or .. segments",
        );
    }
    let session = match relay.registry().lookup(channel) {
        Lookup::Unknown => return error_response(StatusCode::NOT_FOUND, "unknown channel"),
        Lookup::Offline => return offline(),
        Lookup::Attached(session) => session,
    };
    let limits = relay.config().limits.clone();
    if declared_length(&headers).is_some_and(|length| length > limits.max_body) {
        tokio::spawn(discard(body, limits.max_body.saturating_mul(4)));
        return too_large();
    }

    let started = Instant::now();
    let trusted = relay.is_trusted(meta.peer.ip());
    let head = request_head(method, suffix, headers, &meta, trusted, channel);
    let outgoing = match session.mux().open(&head) {
        Ok(outgoing) => outgoing,
        Err(OpenError::Closed) => return offline(),
        Err(OpenError::Busy) => {
            warn!(%channel, "channel has too many requests in flight");
            let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "channel is busy");
            set_retry_after(&mut response);
            return response;
        }
    };
    let (uploaded, upload) = oneshot::channel();
    let progress = Progress::new();
    tokio::spawn(forward_body(
        body,
        outgoing.stream.clone(),
        limits.max_body,
        progress.clone(),
        uploaded,
    ));
    let response = respond(outgoing, upload, &progress, limits.request_timeout).await;
    debug!(
        %channel,
        delivery = ?head.delivery_id,
        method = %head.method,
        status = response.status().as_u16(),
        elapsed = ?started.elapsed(),
        "webhook answered"
    );
    response
}

/// Waits for the app's answer, the upload's failure, or `timeout` after the
/// request body last moved.
async fn respond(
    outgoing: OutgoingRequest,
    mut upload: oneshot::Receiver<Upload>,
    progress: &Progress,
    timeout: Duration,
) -> Response {
    let OutgoingRequest { stream, response } = outgoing;
    let mut response = pin!(response.recv());
    let mut deadline = pin!(progress.idle_for(timeout));
    let mut uploading = true;
    loop {
        tokio::select! {
            biased;
            outcome = &mut upload, if uploading => {
                uploading = false;
                if outcome == Ok(Upload::TooLarge) {
                    return too_large();
                }
            }
            answer = &mut response => return answer_response(answer),
            () = &mut deadline => {
                stream.reset(ResetCode::Cancel, "request timeout");
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the local app did not answer in time",
                );
            }
        }
    }
}

fn answer_response(answer: Result<(ResponseHead, InboundBody), StreamError>) -> Response {
    match answer {
        Ok((head, body)) => app_response(head, body),
        Err(StreamError::Reset { code, reason }) => {
            debug!(?code, %reason, "stream reset before the response");
            match code {
                ResetCode::AppUnreachable => {
                    error_response(StatusCode::BAD_GATEWAY, "the local app is unreachable")
                }
                ResetCode::AppTimeout => error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the local app did not answer in time",
                ),
                ResetCode::Refused => {
                    error_response(StatusCode::BAD_REQUEST, "the client refused this request")
                }
                ResetCode::Unavailable => offline(),
                ResetCode::AppFailed => {
                    error_response(StatusCode::BAD_GATEWAY, "the local app failed to answer")
                }
                _ => error_response(StatusCode::BAD_GATEWAY, "the tunnel failed"),
            }
        }
        // The client never saw the request: for the sender the channel was offline.
        Err(StreamError::ConnectionLost {
            acknowledged: false,
        }) => offline(),
        Err(StreamError::ConnectionLost { acknowledged: true }) => {
            error_response(StatusCode::BAD_GATEWAY, "the tunnel connection was lost")
        }
        Err(StreamError::Closed) => error_response(StatusCode::BAD_GATEWAY, "the tunnel failed"),
    }
}

/// The app's status, headers and streamed body.
fn app_response(head: ResponseHead, body: InboundBody) -> Response {
    let ResponseHead {
        status,
        mut headers,
    } = head;
    strip_hop_by_hop(&mut headers);
    let mut response = warp::reply::stream(body).into_response();
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Sends the request body through the tunnel, then ends or resets the stream.
async fn forward_body<S, B>(
    mut body: S,
    stream: StreamHandle,
    max_body: u64,
    progress: Progress,
    uploaded: oneshot::Sender<Upload>,
) where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send + 'static,
{
    let outcome = upload(&mut body, &stream, max_body, &progress).await;
    // Report before resetting, so the waiter sees "too large" rather than a
    // bare reset.
    let _gone = uploaded.send(outcome);
    match outcome {
        Upload::Complete => stream.finish(),
        Upload::TooLarge => {
            stream.reset(ResetCode::BodyTooLarge, "request body larger than max_body");
            discard(body, max_body.saturating_mul(4)).await;
        }
        Upload::SenderFailed => stream.reset(ResetCode::Cancel, "sender's connection failed"),
        Upload::TunnelClosed => {}
    }
}

async fn upload<S, B>(
    body: &mut S,
    stream: &StreamHandle,
    max_body: u64,
    progress: &Progress,
) -> Upload
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let Ok(mut chunk) = chunk else {
            return Upload::SenderFailed;
        };
        let bytes = chunk.copy_to_bytes(chunk.remaining());
        total += bytes.len() as u64;
        if total > max_body {
            return Upload::TooLarge;
        }
        if stream.send_data(bytes).await.is_err() {
            return Upload::TunnelClosed;
        }
        progress.touch();
    }
    progress.touch();
    Upload::Complete
}

/// Reads and drops the rest of a refused body (up to `limit` bytes or
/// [`DISCARD_TIMEOUT`]), so the sender gets to read our answer.
async fn discard<S, B>(mut body: S, limit: u64)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let drain = async {
        let mut total: u64 = 0;
        while let Some(Ok(chunk)) = body.next().await {
            total += chunk.remaining() as u64;
            if total > limit {
                break;
            }
        }
    };
    let _timed_out = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

/// Builds what the client needs to replay the request (SPEC §5).
fn request_head(
    method: Method,
    suffix: &str,
    mut headers: HeaderMap,
    meta: &RequestMeta,
    trusted: bool,
    channel: Uuid,
) -> RequestHead {
    let host = headers.get(header::HOST).cloned().or_else(|| {
        meta.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut headers);
    retain(&mut headers, |name| {
        name != header::HOST && (trusted || !FORWARDING.contains(name))
    });
    add_forwarding(&mut headers, meta, host, channel);

    let mut head = RequestHead::new(method, suffix);
    head.query = meta.uri.query().map(str::to_owned);
    head.headers = headers;
    head.delivery_id = Some(Uuid::new_v4());
    head.received_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|since| since.as_millis() as u64);
    head
}

/// Adds `X-Forwarded-*` so the app can rebuild the URL the sender called,
/// appending to what a trusted proxy already said.
fn add_forwarding(
    headers: &mut HeaderMap,
    meta: &RequestMeta,
    host: Option<HeaderValue>,
    channel: Uuid,
) {
    let peer = meta.peer.ip().to_canonical().to_string();
    let chain: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let forwarded_for = if chain.is_empty() {
        peer
    } else {
        format!("{}, {peer}", chain.join(", "))
    };
    set_header(headers, X_FORWARDED_FOR, &forwarded_for);

    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = host.filter(|_| !headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let outer_prefix = headers
        .get(&X_FORWARDED_PREFIX)
        .and_then(|value| value.to_str().ok())
        .map(|prefix| prefix.trim_end_matches('/').to_owned())
        .unwrap_or_default();
    set_header(
        headers,
        X_FORWARDED_PREFIX,
        &format!("{outer_prefix}/webhook/{channel}"),
    );
}

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The raw path after `/webhook/{id}`: empty or starting with `/`.
fn path_suffix(path: &str) -> &str {
    let rest = path.strip_prefix("/webhook/").unwrap_or("");
    rest.find('/').map_or("", |slash| &rest[slash..])
}

/// Whether a path has a `.` or `..` segment, plain or percent-encoded; URL
/// normalisation would resolve those into another path than the sender's.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn offline() -> Response {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "no client is attached to this channel",
    );
    set_retry_after(&mut response);
    response
}

fn too_large() -> Response {
    error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suffix_is_everything_after_the_channel_segment() {
        let id = "7d1e0c2a-0000-4000-8000-000000000000";
        assert_eq!(path_suffix(&format!("/webhook/{id}")), "");
        assert_eq!(path_suffix(&format!("/webhook/{id}/")), "/");
        assert_eq!(
            path_suffix(&format!("/webhook/{id}/a%2Fb/c;v=1")),
            "/a%2Fb/c;v=1"
        );
        assert_eq!(
            path_suffix(&format!("/webhook/{id}//evil.com/x")),
            "//evil.com/x"
        );
    }

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        for path in ["/..", "/a/../b", "/.", "/%2e%2E/x", "/.%2e", "/%2E"] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["", "/", "/a..b", "/...", "/.well-known/x", "/a%2Fb"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }
}
