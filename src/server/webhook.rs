//! `ANY /webhook/{id}[/rest][?query]`: a webhook in, through the tunnel (or
//! into the offline queue), and the app's own answer back to the sender.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use http::header::HeaderMap;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};
use uuid::Uuid;
use warp::Reply;
use warp::reply::Response;

use super::Relay;
use super::cluster::{
    BoxError, Cluster, Failed, Kind, Outbound, PeerBody, PeerRequest, Route, X_WOW_OUTCOME,
    is_peer_header, peer_head, set_outcome,
};
use super::http::{RequestMeta, error_response, json_response, set_retry_after};
use super::queue::{EnqueueError, QueueLimits};
use super::registry::Lookup;
use super::request::{declared_length, has_dot_segment, path_suffix, request_head};
use super::session::Session;
use crate::config::OfflinePolicy;
use crate::headers::{retain, strip_hop_by_hop};
use crate::idle::Progress;
use crate::protocol::{
    INITIAL_WINDOW, InboundBody, OpenError, RequestHead, ResetCode, ResponseHead, StreamError,
    StreamHandle,
};
use crate::telemetry;

/// A sender whose body was refused gets this long to finish sending it, so
/// that it reads our answer instead of a reset connection.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The sender's request body, as it arrives.
type SenderBody = PeerBody;

/// How the upload of a request body through the tunnel ended.
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

/// What the upload hands back: how it ended and, while everything sent so
/// far still fits in one credit window, those bytes and the unread rest, so
/// a request the client never saw can go to the queue instead.
struct Uploaded {
    outcome: Upload,
    replay: Option<(Vec<Bytes>, SenderBody)>,
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
    let started = Instant::now();
    let response = answer(channel, method, headers, meta, body, relay).await;
    record(&response, started);
    response
}

/// A webhook's request line and headers, as they arrived.
struct Arrived {
    channel: Uuid,
    method: Method,
    headers: HeaderMap,
    meta: RequestMeta,
}

async fn answer<S, B>(
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
    let body: SenderBody = Box::pin(body.map(|chunk| {
        chunk
            .map(|mut buf| {
                let bytes = buf.copy_to_bytes(buf.remaining());
                metrics::counter!(telemetry::REQUEST_BYTES).increment(bytes.len() as u64);
                bytes
            })
            .map_err(BoxError::from)
    }));
    let Ok(channel) = Uuid::parse_str(&channel) else {
        return error_response(StatusCode::NOT_FOUND, "unknown channel");
    };
    if has_dot_segment(path_suffix(meta.uri.path())) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the path must not contain . or .. segments",
        );
    }
    let cluster = relay.cluster().cloned();
    let peer = match &cluster {
        Some(cluster) => cluster.verify(&method, &meta.uri, &headers),
        None => Ok(None),
    };
    let arrived = Arrived {
        channel,
        method: method.clone(),
        headers,
        meta,
    };
    let started = Instant::now();
    let response = match (peer, cluster) {
        (Ok(Some(peer)), _) => from_peer(&relay, arrived, peer, body).await,
        (Ok(None), cluster) => from_sender(&relay, cluster, arrived, body).await,
        (Err(error), _) => {
            warn!(%channel, peer = %arrived.meta.peer, error = %error, "refused a forwarded webhook");
            let mut response =
                error_response(StatusCode::FORBIDDEN, "the forwarding marker was refused");
            set_outcome(response.headers_mut(), "forbidden");
            return response;
        }
    };
    debug!(
        %channel,
        %method,
        status = response.status().as_u16(),
        elapsed = ?started.elapsed(),
        "webhook answered"
    );
    response
}

/// Where a sender's webhook goes.
enum Destination {
    /// The client attached here.
    Session(Arc<Session>),
    /// The replica at this `server_url`, which holds the channel.
    Peer(Arc<Cluster>, String),
    /// Nobody holds it: this replica's queue, or 503.
    Here,
}

/// A webhook from a sender (or a plain balancer): through the client
/// attached here, to the replica holding the channel, or into the queue.
async fn from_sender(
    relay: &Arc<Relay>,
    cluster: Option<Arc<Cluster>>,
    mut arrived: Arrived,
    body: SenderBody,
) -> Response {
    // The forwarding protocol's headers are ours: a sender cannot set them.
    retain(&mut arrived.headers, |name| !is_peer_header(name));
    let channel = arrived.channel;
    let config = relay.config();
    let (destination, policy) = match destination(relay, cluster, channel).await {
        Some(found) => found,
        None => return error_response(StatusCode::NOT_FOUND, "unknown channel"),
    };
    if declared_length(&arrived.headers).is_some_and(|length| length > config.limits.max_body) {
        tokio::spawn(discard(body));
        return too_large();
    }

    let trusted = relay.is_trusted(arrived.meta.peer.ip());
    let suffix = path_suffix(arrived.meta.uri.path());
    let head = request_head(
        arrived.method,
        suffix,
        arrived.headers,
        &arrived.meta,
        trusted,
        channel,
    );
    let queue_first = policy == OfflinePolicy::Queue && relay.queue().has_pending(channel);
    match destination {
        Destination::Session(session) if !queue_first => {
            forward(relay, &session, &head, body, policy).await
        }
        Destination::Peer(cluster, server_url) if !queue_first => {
            to_peer(relay, &cluster, &server_url, channel, &head, body, policy).await
        }
        _ if policy == OfflinePolicy::Reject && !queue_first => offline(),
        _ => enqueue(relay, channel, &head, body).await,
    }
}

/// Where a sender's webhook for `channel` goes, and the channel's offline
/// policy; `None` when no replica knows the channel.
async fn destination(
    relay: &Relay,
    cluster: Option<Arc<Cluster>>,
    channel: Uuid,
) -> Option<(Destination, OfflinePolicy)> {
    let default = relay.config().channels.offline;
    let lookup = relay.registry().lookup(channel);
    let (known, local) = match &lookup {
        Lookup::Attached { offline, .. } | Lookup::Offline { offline } => (true, *offline),
        Lookup::Unknown => (false, None),
    };
    if let Lookup::Attached { session, .. } = lookup {
        return Some((Destination::Session(session), local.unwrap_or(default)));
    }
    // Order holds: while the queue here is not empty, new webhooks join it.
    let policy = local.unwrap_or(default);
    if policy == OfflinePolicy::Queue && relay.queue().has_pending(channel) {
        return Some((Destination::Here, policy));
    }
    let route = match &cluster {
        Some(cluster) => cluster.route(relay, channel, known).await,
        None if known => Route::Offline(None),
        None => Route::Unknown,
    };
    match (route, cluster) {
        (Route::Peer(server_url), Some(cluster)) => {
            Some((Destination::Peer(cluster, server_url), policy))
        }
        (Route::Offline(remote), _) => {
            Some((Destination::Here, local.or(remote).unwrap_or(default)))
        }
        _ => None,
    }
}

/// Sends a webhook on to the replica holding its channel and streams its
/// answer back; if that replica cannot take it, it is handled here.
async fn to_peer(
    relay: &Arc<Relay>,
    cluster: &Cluster,
    server_url: &str,
    channel: Uuid,
    head: &RequestHead,
    body: SenderBody,
    policy: OfflinePolicy,
) -> Response {
    let outbound = Outbound {
        server_url,
        channel,
        head,
        kind: Kind::Live,
    };
    let timeout = relay.config().limits.request_timeout;
    match cluster.send(&outbound, body, timeout).await {
        Ok(answer) => peer_response(answer),
        Err(Failed {
            body: Some(body), ..
        }) if policy == OfflinePolicy::Queue => enqueue(relay, channel, head, body).await,
        Err(Failed { body: Some(_), .. }) => offline(),
        Err(Failed { body: None, .. }) => error_response(
            StatusCode::BAD_GATEWAY,
            "the relay holding this channel failed mid-request",
        ),
    }
}

/// The holder's answer to a forwarded webhook, as the sender gets it.
fn peer_response(answer: http::Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(X_WOW_OUTCOME);
    streamed(
        parts.status,
        parts.headers,
        body.into_data_stream(),
        Outcome::Forwarded,
    )
}

/// An answer streamed to the sender as it arrives, its bytes counted.
fn streamed<S, E>(status: StatusCode, headers: HeaderMap, body: S, outcome: Outcome) -> Response
where
    S: Stream<Item = Result<Bytes, E>> + Send + Sync + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let counted = body.inspect(|chunk| {
        if let Ok(bytes) = chunk {
            metrics::counter!(telemetry::RESPONSE_BYTES).increment(bytes.len() as u64);
        }
    });
    let mut response = warp::reply::stream(counted).into_response();
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(outcome);
    response
}

/// A webhook another replica forwarded (its marker verified): handled
/// here whatever happens, never forwarded again. A queued delivery handed
/// over is only delivered straight to an attached client.
async fn from_peer(
    relay: &Arc<Relay>,
    arrived: Arrived,
    peer: PeerRequest,
    body: SenderBody,
) -> Response {
    let channel = arrived.channel;
    let config = relay.config();
    let default = config.channels.offline;
    // An unknown channel is one the forwarding replica knows: take it.
    let (session, policy) = match relay.registry().lookup(channel) {
        Lookup::Attached { session, offline } => (Some(session), offline.unwrap_or(default)),
        Lookup::Offline { offline } => (None, offline.unwrap_or(default)),
        Lookup::Unknown => (None, default),
    };
    if declared_length(&arrived.headers).is_some_and(|length| length > config.limits.max_body) {
        tokio::spawn(discard(body));
        return too_large();
    }
    let suffix = path_suffix(arrived.meta.uri.path());
    let head = peer_head(
        arrived.method,
        suffix,
        arrived.headers,
        &arrived.meta.uri,
        peer,
    );
    let queue_first = policy == OfflinePolicy::Queue && relay.queue().has_pending(channel);
    let mut response = match (peer.kind, session) {
        (Kind::Handoff, Some(session)) => {
            forward(relay, &session, &head, body, OfflinePolicy::Reject).await
        }
        (Kind::Handoff, None) => {
            let mut response = offline();
            set_outcome(response.headers_mut(), "not-held");
            return response;
        }
        (Kind::Live, Some(session)) if !queue_first => {
            forward(relay, &session, &head, body, policy).await
        }
        (Kind::Live, _) if policy == OfflinePolicy::Reject && !queue_first => offline(),
        (Kind::Live, _) => enqueue(relay, channel, &head, body).await,
    };
    let outcome = match response.extensions().get::<Outcome>() {
        Some(Outcome::Delivered) => Some("delivered"),
        Some(Outcome::Queued) => Some("queued"),
        Some(Outcome::Refused) => Some("refused"),
        Some(Outcome::Forwarded) | None => None,
    };
    if let Some(outcome) = outcome {
        set_outcome(response.headers_mut(), outcome);
    }
    response
}

/// How a webhook was answered, for metrics: attached to the responses that
/// are not the relay's own refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The app's own answer.
    Delivered,
    /// Stored in the offline queue (202).
    Queued,
    /// The client refused the request (400).
    Refused,
    /// Sent on to the replica holding the channel, which counts it itself.
    Forwarded,
}

fn record(response: &Response, started: Instant) {
    let status = response.status().as_u16();
    let outcome = match response.extensions().get::<Outcome>() {
        Some(Outcome::Delivered) => {
            metrics::histogram!(telemetry::DELIVERY_DURATION)
                .record(started.elapsed().as_secs_f64());
            "delivered"
        }
        Some(Outcome::Queued) => "queued",
        Some(Outcome::Forwarded) => "forwarded",
        Some(Outcome::Refused) => "rejected",
        None if status == 502 || status == 504 => "failed",
        None => "rejected",
    };
    metrics::counter!(telemetry::WEBHOOKS, "outcome" => outcome, "class" => telemetry::status_class(status))
        .increment(1);
}

/// Sends the request through the attached client and waits for the answer.
async fn forward(
    relay: &Arc<Relay>,
    session: &super::session::Session,
    head: &RequestHead,
    body: SenderBody,
    policy: OfflinePolicy,
) -> Response {
    let limits = relay.config().limits.clone();
    let outgoing = match session.mux().open(head) {
        Ok(outgoing) => outgoing,
        Err(OpenError::Closed) if policy == OfflinePolicy::Queue => {
            return enqueue(relay, session.channel(), head, body).await;
        }
        Err(OpenError::Closed) => return offline(),
        Err(OpenError::Busy) => {
            warn!(channel = %session.channel(), "channel has too many requests in flight");
            let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "channel is busy");
            set_retry_after(&mut response);
            return response;
        }
    };

    let (uploaded_tx, mut uploaded) = oneshot::channel();
    let progress = Progress::new();
    tokio::spawn(upload(
        body,
        outgoing.stream.clone(),
        limits.max_body,
        progress.clone(),
        uploaded_tx,
    ));

    let mut response = pin!(outgoing.response.recv());
    let mut deadline = pin!(progress.idle_for(limits.request_timeout));
    let mut upload_result: Option<Uploaded> = None;
    let answer = loop {
        tokio::select! {
            biased;
            result = &mut uploaded, if upload_result.is_none() => {
                let Ok(result) = result else { continue };
                if result.outcome == Upload::TooLarge {
                    return too_large();
                }
                upload_result = Some(result);
            }
            answer = &mut response => break answer,
            () = &mut deadline => {
                outgoing.stream.reset(ResetCode::Cancel, "request timeout");
                return error_response(StatusCode::GATEWAY_TIMEOUT, "the local app did not answer in time");
            }
        }
    };

    // The client never saw the request, or turned it away unread because it
    // is shutting down: for the sender the channel was offline.
    if let Err(
        StreamError::ConnectionLost {
            acknowledged: false,
        }
        | StreamError::Reset {
            code: ResetCode::Unavailable,
            ..
        },
    ) = answer
    {
        if policy == OfflinePolicy::Reject {
            return offline();
        }
        let result = match upload_result {
            Some(result) => Some(result),
            None => uploaded.await.ok(),
        };
        return match result.and_then(|result| result.replay) {
            Some((sent, rest)) => {
                let replayed: SenderBody =
                    Box::pin(futures::stream::iter(sent.into_iter().map(Ok)).chain(rest));
                enqueue(relay, session.channel(), head, replayed).await
            }
            None => offline(),
        };
    }
    answer_response(answer)
}

/// Stores the request in the channel's queue and answers 202.
async fn enqueue(relay: &Relay, channel: Uuid, head: &RequestHead, body: SenderBody) -> Response {
    let config = relay.config();
    let limits = QueueLimits {
        max_count: config.channels.queue_max,
        max_bytes: config.channels.queue_max_bytes,
        max_body: config.limits.max_body,
    };
    let queue = relay.queue();
    let stored = match queue.reserve(channel, &limits) {
        Ok(reservation) => queue.store(reservation, head, body, &limits).await,
        Err(error) => Err(error),
    };
    match stored {
        Ok(()) => {
            let id = head.delivery_id.unwrap_or_default();
            debug!(%channel, delivery = %id, "webhook queued");
            let mut response = json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "delivery_id": id }),
            );
            response.extensions_mut().insert(Outcome::Queued);
            response
        }
        Err(EnqueueError::Full) => {
            warn!(%channel, "offline queue full: refusing a webhook");
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the channel's queue is full",
            );
            set_retry_after(&mut response);
            response
        }
        Err(EnqueueError::TooLarge) => too_large(),
        Err(EnqueueError::Sender(reason)) => {
            debug!(%channel, %reason, "sender's body failed while queueing");
            error_response(StatusCode::BAD_REQUEST, "the request body was cut")
        }
        Err(EnqueueError::Storage(error)) => {
            error!(%channel, error = format!("{error:#}"), "cannot store a webhook in the queue");
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the webhook could not be stored",
            );
            set_retry_after(&mut response);
            response
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
                    let mut response =
                        error_response(StatusCode::BAD_REQUEST, "the client refused this request");
                    response.extensions_mut().insert(Outcome::Refused);
                    response
                }
                ResetCode::Unavailable => offline(),
                ResetCode::AppFailed => {
                    error_response(StatusCode::BAD_GATEWAY, "the local app failed to answer")
                }
                _ => error_response(StatusCode::BAD_GATEWAY, "the tunnel failed"),
            }
        }
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
    streamed(status, headers, body, Outcome::Delivered)
}

/// Sends the request body through the tunnel, then ends or resets the stream.
async fn upload(
    mut body: SenderBody,
    stream: StreamHandle,
    max_body: u64,
    progress: Progress,
    uploaded: oneshot::Sender<Uploaded>,
) {
    let mut total: u64 = 0;
    let mut sent: Option<Vec<Bytes>> = Some(Vec::new());
    let outcome = loop {
        let Some(chunk) = body.next().await else {
            break Upload::Complete;
        };
        let Ok(chunk) = chunk else {
            break Upload::SenderFailed;
        };
        total += chunk.len() as u64;
        if total > max_body {
            break Upload::TooLarge;
        }
        // Beyond one window the client has granted credit: it has the request.
        if total > u64::from(INITIAL_WINDOW) {
            sent = None;
        }
        if let Some(sent) = sent.as_mut() {
            sent.push(chunk.clone());
        }
        if stream.send_data(chunk).await.is_err() {
            break Upload::TunnelClosed;
        }
        progress.touch();
    };
    progress.touch();

    match outcome {
        Upload::Complete => stream.finish(),
        Upload::TooLarge => {
            stream.reset(ResetCode::BodyTooLarge, "request body larger than max_body")
        }
        Upload::SenderFailed => stream.reset(ResetCode::Cancel, "sender's connection failed"),
        Upload::TunnelClosed => {}
    }
    let keep_rest = matches!(outcome, Upload::Complete | Upload::TunnelClosed);
    if outcome == Upload::TooLarge {
        // Report first, so the waiter answers 413 rather than a bare reset.
        let _gone = uploaded.send(Uploaded {
            outcome,
            replay: None,
        });
        discard(body).await;
        return;
    }
    let replay = sent.filter(|_| keep_rest).map(|sent| (sent, body));
    let _gone = uploaded.send(Uploaded { outcome, replay });
}

/// Reads and drops the rest of a refused body (for at most
/// [`DISCARD_TIMEOUT`]), so the sender gets to read our answer.
async fn discard(mut body: SenderBody) {
    let drain = async { while let Some(Ok(_)) = body.next().await {} };
    let _timed_out = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
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
