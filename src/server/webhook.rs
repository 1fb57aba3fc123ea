//! `ANY /webhook/{id}[/rest][?query]`: a webhook in, through the tunnel (or
//! into the offline queue), and the app's own answer back to the sender.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use http::header::HeaderMap;
use http::{Method, StatusCode};
use tokio::sync::oneshot;
use tracing::{debug, error, warn};
use uuid::Uuid;
use warp::Reply;
use warp::reply::Response;

use super::Relay;
use super::http::{RequestMeta, error_response, json_response, set_retry_after};
use super::queue::{EnqueueError, QueueLimits};
use super::registry::Lookup;
use super::request::{declared_length, has_dot_segment, path_suffix, request_head};
use crate::config::OfflinePolicy;
use crate::headers::strip_hop_by_hop;
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
type SenderBody = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

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
        chunk.map(|mut buf| {
            let bytes = buf.copy_to_bytes(buf.remaining());
            metrics::counter!(telemetry::REQUEST_BYTES).increment(bytes.len() as u64);
            bytes
        })
    }));
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
    let config = relay.config();
    let (session, policy) = match relay.registry().lookup(channel) {
        Lookup::Unknown => return error_response(StatusCode::NOT_FOUND, "unknown channel"),
        Lookup::Offline { offline } => (None, offline.unwrap_or(config.channels.offline)),
        Lookup::Attached { session, offline } => {
            (Some(session), offline.unwrap_or(config.channels.offline))
        }
    };
    if declared_length(&headers).is_some_and(|length| length > config.limits.max_body) {
        tokio::spawn(discard(body));
        return too_large();
    }

    let started = Instant::now();
    let trusted = relay.is_trusted(meta.peer.ip());
    let head = request_head(method, suffix, headers, &meta, trusted, channel);
    let queue_first = policy == OfflinePolicy::Queue && relay.queue().has_pending(channel);
    let response = match session {
        Some(session) if !queue_first => forward(&relay, &session, &head, body, policy).await,
        None if policy == OfflinePolicy::Reject => offline(),
        _ => enqueue(&relay, channel, &head, body).await,
    };
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

/// How a webhook was answered, for metrics: attached to the responses that
/// are not the relay's own refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The app's own answer.
    Delivered,
    /// Stored in the offline queue (202).
    Queued,
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

    // The client never saw the request: for the sender the channel was offline.
    if let Err(StreamError::ConnectionLost {
        acknowledged: false,
    }) = answer
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
                    error_response(StatusCode::BAD_REQUEST, "the client refused this request")
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
    let counted = body.inspect(|chunk| {
        if let Ok(bytes) = chunk {
            metrics::counter!(telemetry::RESPONSE_BYTES).increment(bytes.len() as u64);
        }
    });
    let mut response = warp::reply::stream(counted).into_response();
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(Outcome::Delivered);
    response
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
