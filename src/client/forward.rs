//! The request to the local app: the client's only door to the network
//! besides the server.
//!
//! This uses hyper's client directly rather than reqwest: reqwest takes a
//! WHATWG `Url`, whose parser rewrites what the tunnel promises to keep
//! byte for byte (it percent-encodes `'` in queries and `{`, `}`, `"` in
//! paths, and resolves `%2e%2e`). hyper sends the `Uri` we built as is.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

use super::Target;
use super::output::Delivery;
use crate::headers::strip_hop_by_hop;
use crate::idle::Progress;
use crate::protocol::{
    InboundBody, IncomingRequest, RequestHead, ResetCode, ResponseHead, StreamError, StreamHandle,
};

/// The id of the delivery, on every request the app gets.
pub const X_WOW_DELIVERY_ID: HeaderName = HeaderName::from_static("x-wow-delivery-id");
/// `true` on deliveries that come from the server's offline queue.
pub const X_WOW_REDELIVERED: HeaderName = HeaderName::from_static("x-wow-redelivered");
/// When the server received a redelivered request (RFC 3339).
pub const X_WOW_RECEIVED_AT: HeaderName = HeaderName::from_static("x-wow-received-at");

/// How long an idle connection to the app is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the forwarder sends it.
pub type ForwardBody = BoxBody<Bytes, BoxError>;

/// Sends requests to local apps over a pool of kept-alive connections.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, ForwardBody>,
}

/// How a forward ended, for the stream and the delivery line.
#[derive(Debug)]
enum Failure {
    Refused(String),
    Unreachable(String),
    TimedOut,
    Failed(String),
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder::new()
    }
}

impl Forwarder {
    /// A forwarder that verifies `https` targets against the system's trust store.
    pub fn new() -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_native_roots() {
            Ok(builder) => builder,
            Err(error) => {
                warn!(error = %error, "no system trust store: https targets will fail verification");
                let empty = rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(empty)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Forwarder { client }
    }

    /// Forwards one tunnelled request to `target` and streams the answer back.
    pub async fn forward(
        &self,
        profile: &str,
        target: &Target,
        timeout: Option<Duration>,
        request: IncomingRequest,
    ) -> Delivery {
        let at = SystemTime::now();
        let started = Instant::now();
        let IncomingRequest { head, body, stream } = request;
        let progress = Progress::new();
        let counted = Arc::new(AtomicU64::new(0));
        let body = Metered {
            inner: body,
            bytes: counted.clone(),
            progress: progress.clone(),
        }
        .map_err(BoxError::from)
        .boxed();

        let outcome = self
            .exchange(target, timeout, &progress, &head, body, &stream)
            .await;
        let status = match outcome {
            Ok(status) => status.as_u16(),
            Err(failure) => fail(&stream, &failure),
        };
        Delivery {
            at,
            profile: profile.to_owned(),
            id: head.delivery_id,
            method: head.method,
            path: target.path(&head.path),
            status,
            elapsed: started.elapsed(),
            bytes: counted.load(Ordering::Relaxed),
            redelivered: head.redelivered,
        }
    }

    async fn exchange(
        &self,
        target: &Target,
        timeout: Option<Duration>,
        progress: &Progress,
        head: &RequestHead,
        body: ForwardBody,
        stream: &StreamHandle,
    ) -> Result<StatusCode, Failure> {
        let uri = target
            .uri(&head.path, head.query.as_deref())
            .map_err(Failure::Refused)?;
        let mut request = Request::new(body);
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = app_headers(head, target);

        let sent = self.client.request(request);
        // The app may take `timeout` to answer after its last read of the body.
        let response = match timeout {
            Some(limit) => tokio::select! {
                response = sent => response,
                () = progress.idle_for(limit) => return Err(Failure::TimedOut),
            },
            None => sent.await,
        };
        let response = response.map_err(|error| {
            if error.is_connect() {
                Failure::Unreachable(format!("{:#}", anyhow::Error::from(error)))
            } else {
                Failure::Failed(format!("{:#}", anyhow::Error::from(error)))
            }
        })?;
        send_response(response, stream).await
    }
}

/// The request body on its way to the app: counts its bytes and marks
/// progress, so the timeout counts from the app's last read.
struct Metered {
    inner: InboundBody,
    bytes: Arc<AtomicU64>,
    progress: Progress,
}

impl Body for Metered {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(ready) = &polled {
            if let Some(Ok(frame)) = ready {
                let len = frame.data_ref().map_or(0, Bytes::len);
                self.bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            self.progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The headers the app gets: the sender's, its own `Host`, and the delivery's.
fn app_headers(head: &RequestHead, target: &Target) -> http::HeaderMap {
    let mut headers = http::HeaderMap::with_capacity(head.headers.len() + 4);
    headers.insert(HOST, target.host_header());
    for (name, value) in &head.headers {
        if name != HOST {
            headers.append(name, value.clone());
        }
    }
    // The server already removed these; a different server may not have.
    strip_hop_by_hop(&mut headers);
    if let Some(id) = head.delivery_id
        && let Ok(value) = HeaderValue::from_str(&id.to_string())
    {
        headers.insert(X_WOW_DELIVERY_ID, value);
    }
    if head.redelivered {
        headers.insert(X_WOW_REDELIVERED, HeaderValue::from_static("true"));
        let received = head
            .received_at_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .map(|at| humantime::format_rfc3339_seconds(at).to_string())
            .and_then(|at| HeaderValue::from_str(&at).ok());
        if let Some(received) = received {
            headers.insert(X_WOW_RECEIVED_AT, received);
        }
    }
    headers
}

/// Sends the app's head, then its body, through the tunnel.
async fn send_response(
    response: Response<Incoming>,
    stream: &StreamHandle,
) -> Result<StatusCode, Failure> {
    let (parts, mut body) = response.into_parts();
    let mut head = ResponseHead::new(parts.status);
    head.headers = parts.headers;
    strip_hop_by_hop(&mut head.headers);
    stream.send_response(&head);

    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|error| Failure::Failed(format!("app response body: {error}")))?;
        // Trailers have no place in the protocol; an app rarely sends them.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if stream.send_data(data).await.is_err() {
            debug!("sender went away while the answer was streaming");
            return Ok(parts.status);
        }
    }
    stream.finish();
    Ok(parts.status)
}

/// Resets the stream for a failed forward; returns the status the sender sees.
fn fail(stream: &StreamHandle, failure: &Failure) -> u16 {
    let (code, status, reason) = match failure {
        Failure::Refused(reason) => (ResetCode::Refused, StatusCode::BAD_REQUEST, reason.as_str()),
        Failure::Unreachable(reason) => (
            ResetCode::AppUnreachable,
            StatusCode::BAD_GATEWAY,
            reason.as_str(),
        ),
        Failure::TimedOut => (
            ResetCode::AppTimeout,
            StatusCode::GATEWAY_TIMEOUT,
            "app timed out",
        ),
        Failure::Failed(reason) => (
            ResetCode::AppFailed,
            StatusCode::BAD_GATEWAY,
            reason.as_str(),
        ),
    };
    warn!(code = ?code, reason, "forward to the app failed");
    stream.reset(code, reason);
    status.as_u16()
}
