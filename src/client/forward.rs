//! The request to the local app: the client's only door to the network
//! besides the server.
//!
//! This uses hyper's client directly rather than reqwest: reqwest takes a
//! WHATWG `Url`, whose parser rewrites what the tunnel promises to keep
//! byte for byte (it percent-encodes `'` in queries and `{`, `}`, `"` in
//! paths, and resolves `%2e%2e`). hyper sends the `Uri` we built as is.

use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
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
use uuid::Uuid;

use super::Target;
use super::history::{Entry, KeptBody};
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

/// On a replay from the history: the id of the delivery re-sent.
pub const X_WOW_REPLAY_OF: HeaderName = HeaderName::from_static("x-wow-replay-of");

/// How long an idle connection to the app is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the forwarder sends it.
pub type ForwardBody = BoxBody<Bytes, BoxError>;

/// Sends requests to local apps over a pool of kept-alive connections.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, ForwardBody>,
    /// Body bytes kept for the history, per body.
    keep: u64,
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
        // Without TCP_NODELAY, a request whose head and body go out in two
        // writes waits for the app's delayed ACK (40 ms) before the body.
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Forwarder { client, keep: 0 }
    }

    /// Keeps up to `bytes` of each request and response body for the history.
    pub fn keeping(mut self, bytes: u64) -> Self {
        self.keep = bytes;
        self
    }

    /// Forwards one tunnelled request to `target` and streams the answer
    /// back; returns what happened, for the delivery line and the history.
    pub async fn forward(
        &self,
        profile: &str,
        target: &Target,
        timeout: Option<Duration>,
        request: IncomingRequest,
    ) -> Entry {
        let at = SystemTime::now();
        let started = Instant::now();
        let IncomingRequest { head, body, stream } = request;
        let progress = Progress::new();
        let kept = Arc::new(Mutex::new(KeptBody::default()));
        let cut = Arc::new(OnceLock::new());
        let body = Metered {
            inner: body,
            kept: kept.clone(),
            keep: self.keep,
            progress: progress.clone(),
            cut: cut.clone(),
        }
        .map_err(BoxError::from)
        .boxed();

        let headers = app_headers(&head, target, None);
        let sent = self
            .exchange(target, timeout, &progress, &head, headers, body)
            .await;
        let mut answer = Answer::default();
        let status = match (sent, cut.get()) {
            (Ok(response), _) => match self.stream_back(response, &stream, &mut answer).await {
                Ok(status) => status,
                Err(failure) => fail(&stream, &failure),
            },
            // The relay cut the request off: not the app's failure.
            (Err(_), Some(&code)) => cut_off(code),
            (Err(failure), None) => fail(&stream, &failure),
        };
        let request_body = take(&kept);
        Entry {
            delivery: Delivery {
                at,
                profile: profile.to_owned(),
                id: head.delivery_id,
                method: head.method.clone(),
                path: target.path(&head.path),
                status,
                elapsed: started.elapsed(),
                bytes: request_body.len,
                redelivered: head.redelivered,
            },
            target: target.to_string(),
            request: head,
            request_body,
            response: answer.head,
            response_body: answer.body,
            replay_of: None,
        }
    }

    /// Sends a delivery from the history again, byte for byte, to `target`,
    /// with `X-Wow-Replay-Of` naming the original.
    ///
    /// # Errors
    ///
    /// When the stored body was cut (the replay could not be exact), or the
    /// app cannot be reached or fails.
    pub async fn replay(
        &self,
        profile: &str,
        target: &Target,
        timeout: Option<Duration>,
        original: &Entry,
    ) -> anyhow::Result<Entry> {
        let body = &original.request_body;
        anyhow::ensure!(
            !body.truncated(),
            "the stored body was cut at {} of {} bytes, so a replay would not be byte-exact; \
             raise history_body_max to keep whole bodies of later deliveries",
            body.bytes.len(),
            body.len
        );
        let at = SystemTime::now();
        let started = Instant::now();
        let mut head = original.request.clone();
        head.delivery_id = Some(Uuid::new_v4());
        head.redelivered = false;
        let original_id = original.delivery.id;
        let headers = app_headers(&head, target, original_id);
        let bytes = Bytes::from(body.bytes.clone());
        let progress = Progress::new();
        let full = http_body_util::Full::new(bytes.clone())
            .map_err(BoxError::from)
            .boxed();
        let response = self
            .exchange(target, timeout, &progress, &head, headers, full)
            .await
            .map_err(|failure| anyhow::anyhow!("{}", failure.describe()))?;
        let (parts, mut incoming) = response.into_parts();
        let mut answer = Answer::default();
        let mut response_head = ResponseHead::new(parts.status);
        response_head.headers = parts.headers;
        answer.head = Some(response_head);
        while let Some(frame) = incoming.frame().await {
            let frame = frame.context("the app's answer was cut")?;
            if let Ok(data) = frame.into_data() {
                answer.body.push(&data, self.keep);
            }
        }
        let mut request_body = KeptBody::default();
        request_body.push(&bytes, self.keep);
        Ok(Entry {
            delivery: Delivery {
                at,
                profile: profile.to_owned(),
                id: head.delivery_id,
                method: head.method.clone(),
                path: target.path(&head.path),
                status: parts.status.as_u16(),
                elapsed: started.elapsed(),
                bytes: request_body.len,
                redelivered: false,
            },
            target: target.to_string(),
            request: head,
            request_body,
            response: answer.head,
            response_body: answer.body,
            replay_of: original_id,
        })
    }

    async fn exchange(
        &self,
        target: &Target,
        timeout: Option<Duration>,
        progress: &Progress,
        head: &RequestHead,
        headers: http::HeaderMap,
        body: ForwardBody,
    ) -> Result<Response<Incoming>, Failure> {
        let uri = target
            .uri(&head.path, head.query.as_deref())
            .map_err(Failure::Refused)?;
        let mut request = Request::new(body);
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        let sent = self.client.request(request);
        // The app may take `timeout` to answer after its last read of the body.
        let response = match timeout {
            Some(limit) => tokio::select! {
                response = sent => response,
                () = progress.idle_for(limit) => return Err(Failure::TimedOut),
            },
            None => sent.await,
        };
        response.map_err(|error| {
            if error.is_connect() {
                Failure::Unreachable(format!("{:#}", anyhow::Error::from(error)))
            } else {
                Failure::Failed(format!("{:#}", anyhow::Error::from(error)))
            }
        })
    }

    /// Sends the app's head, then its body, through the tunnel, keeping
    /// what the history keeps.
    async fn stream_back(
        &self,
        response: Response<Incoming>,
        stream: &StreamHandle,
        answer: &mut Answer,
    ) -> Result<u16, Failure> {
        let (parts, mut body) = response.into_parts();
        let mut head = ResponseHead::new(parts.status);
        head.headers = parts.headers;
        strip_hop_by_hop(&mut head.headers);
        stream.send_response(&head);
        answer.head = Some(head);

        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|error| Failure::Failed(format!("app response body: {error}")))?;
            // Trailers have no place in the protocol; an app rarely sends them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            answer.body.push(&data, self.keep);
            if stream.send_data(data).await.is_err() {
                debug!("sender went away while the answer was streaming");
                return Ok(parts.status.as_u16());
            }
        }
        stream.finish();
        Ok(parts.status.as_u16())
    }
}

/// The app's answer as the history keeps it.
#[derive(Debug, Default)]
struct Answer {
    head: Option<ResponseHead>,
    body: KeptBody,
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Refused(reason) => format!("the request was refused: {reason}"),
            Failure::Unreachable(reason) => format!("the app is unreachable: {reason}"),
            Failure::TimedOut => "the app did not answer in time".to_owned(),
            Failure::Failed(reason) => format!("the app failed: {reason}"),
        }
    }
}

fn take(kept: &Mutex<KeptBody>) -> KeptBody {
    kept.lock()
        .map(|mut kept| std::mem::take(&mut *kept))
        .unwrap_or_default()
}

/// The request body on its way to the app: counts its bytes and marks
/// progress, so the timeout counts from the app's last read.
struct Metered {
    inner: InboundBody,
    kept: Arc<Mutex<KeptBody>>,
    keep: u64,
    progress: Progress,
    /// Why the relay reset the stream mid-body, if it did.
    cut: Arc<OnceLock<ResetCode>>,
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
            if let Some(Ok(frame)) = ready
                && let Some(data) = frame.data_ref()
                && let Ok(mut kept) = self.kept.lock()
            {
                kept.push(data, self.keep);
            }
            if let Some(Err(StreamError::Reset { code, .. })) = ready {
                let _first = self.cut.set(*code);
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
fn app_headers(head: &RequestHead, target: &Target, replay_of: Option<Uuid>) -> http::HeaderMap {
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
    if let Some(original) = replay_of
        && let Ok(value) = HeaderValue::from_str(&original.to_string())
    {
        headers.insert(X_WOW_REPLAY_OF, value);
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

/// The status the sender got when the relay cut its request off mid-body:
/// 413 for a body past `max_body`; otherwise the sender went away, which
/// the delivery line shows as 499 (nginx's "client closed request").
fn cut_off(code: ResetCode) -> u16 {
    debug!(
        ?code,
        "the relay cut the request off before the app answered"
    );
    match code {
        ResetCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
        _ => 499,
    }
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
