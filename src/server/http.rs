//! The HTTP front: connection limits, routes and their status codes.
//!
//! Connections are served by hyper through `hyper_util`'s connection
//! builder (not `warp::serve`) so that a request head must arrive within
//! `header_timeout` and cannot exceed `max_header_bytes`; a slow or huge
//! head never pins the server. Each request then passes through
//! [`Frontend`], which records what warp filters cannot see (the peer
//! address, the raw request target, the upgrade handle) and goes to the warp
//! routes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, warn};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::auth::bearer;
use super::{Relay, attach, webhook};

/// Headers per request at most (hyper's default is 100; some senders send more).
const MAX_HEADERS: usize = 256;

/// What [`Frontend`] learns about a request before routing it.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The TCP peer (a proxy's address when behind one).
    pub peer: SocketAddr,
    /// The request target exactly as received.
    pub uri: Uri,
}

/// The upgrade handle of a `/ws/` request, taken out of hyper's extensions
/// so that a warp filter (which only clones extensions) can finish the
/// upgrade itself.
#[derive(Debug, Clone, Default)]
pub struct UpgradeSlot(Arc<Mutex<Option<OnUpgrade>>>);

impl UpgradeSlot {
    /// Takes the upgrade handle; `None` if already taken.
    pub fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().ok()?.take()
    }
}

/// Serves HTTP on `listener` until `shutdown` fires, then stops accepting
/// and waits (at most `drain_timeout`) for in-flight requests.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>, shutdown: CancellationToken) {
    let config = relay.config();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_head = config.limits.max_header_bytes as usize;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_timeout)
        // hyper answers a bare 431 past its buffer; up to twice the limit we
        // read the head and answer 431 with a JSON body ourselves.
        .max_buf_size((max_head * 2).max(16 * 1024))
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let routes = warp::service(routes(relay.clone()));
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off briefly.
                    warn!(error = %error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(error = %error, "cannot disable Nagle");
        }
        let frontend = Frontend {
            routes: routes.clone(),
            peer,
            max_head,
        };
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), frontend)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    let drain_timeout = relay.config().limits.drain_timeout;
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(timeout = ?drain_timeout, "in-flight requests did not finish within the drain timeout");
    }
}

/// Per-connection service in front of the warp routes.
#[derive(Clone)]
struct Frontend<S> {
    routes: S,
    peer: SocketAddr,
    max_head: usize,
}

impl<S> hyper::service::Service<Request<Incoming>> for Frontend<S>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if head_len(&request) > self.max_head {
            let response = error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large",
            );
            return Box::pin(std::future::ready(Ok(response)));
        }
        let meta = RequestMeta {
            peer: self.peer,
            uri: request.uri().clone(),
        };
        if request.uri().path().starts_with("/ws/") {
            let upgrade = request.extensions_mut().remove::<OnUpgrade>();
            let slot = UpgradeSlot(Arc::new(Mutex::new(upgrade)));
            request.extensions_mut().insert(slot);
        }
        request.extensions_mut().insert(meta);
        let mut routes = self.routes.clone();
        Box::pin(routes.call(request))
    }
}

/// The size of a request head as a sender wrote it, near enough.
fn head_len<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len() + uri_len(request.uri()) + 12;
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers
}

/// The length of `uri` as written, without writing it out.
fn uri_len(uri: &Uri) -> usize {
    let scheme = uri
        .scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len());
    let authority = uri
        .authority()
        .map_or(0, |authority| authority.as_str().len());
    let path = uri.path_and_query().map_or(0, |path| path.as_str().len());
    scheme + authority + path
}

/// All routes of the server.
pub fn routes(relay: Arc<Relay>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let relay_for_guard = relay.clone();
    let with_relay = warp::any().map(move || relay.clone());
    let meta = warp::ext::get::<RequestMeta>();

    let healthz = warp::path!("healthz")
        .and(warp::get().or(warp::head()).unify())
        .map(|| json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get().or(warp::head()).unify())
        .and(with_relay.clone())
        .map(|relay: Arc<Relay>| readiness(&relay));
    let new = warp::path!("new")
        .and(warp::get().or(warp::post()).unify())
        .and(warp::query::<attach::ChannelOptions>())
        .and(with_relay.clone())
        .and(warp::header::headers_cloned())
        .and(meta)
        .map(attach::new_channel);
    let ws = warp::path("ws")
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::query::<attach::ChannelOptions>())
        .and(with_relay.clone())
        .and(warp::header::headers_cloned())
        .and(meta)
        .and(warp::ext::optional::<UpgradeSlot>())
        .then(attach::attach);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(require_cluster_secret(relay_for_guard.clone()))
        .and(with_relay.clone())
        .map(|relay: Arc<Relay>| metrics_response(&relay));
    let webhook = warp::path("webhook")
        .and(warp::path::param::<String>())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(meta)
        .and(warp::body::stream())
        .and(with_relay)
        .then(webhook::handle);

    healthz
        .or(readyz)
        .unify()
        .or(new)
        .unify()
        .or(ws)
        .unify()
        .or(metrics)
        .unify()
        .or(webhook)
        .unify()
        .recover(rejection_response)
        .unify()
}

/// Demands `Authorization: Bearer <cluster.secret>` when a cluster secret
/// is configured (for `/metrics`, `/internal/*`, `/traefik-config`).
pub fn require_cluster_secret(
    relay: Arc<Relay>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |authorization: Option<String>| {
            let secret = relay.config().cluster.secret.clone();
            async move {
                if secret.is_empty() {
                    return Ok(());
                }
                let offered = bearer(authorization.as_deref()).unwrap_or("");
                if bool::from(offered.as_bytes().ct_eq(secret.expose().as_bytes())) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthorized))
                }
            }
        })
        .untuple_one()
}

/// A request to an internal endpoint without the cluster secret.
#[derive(Debug)]
struct Unauthorized;

impl warp::reject::Reject for Unauthorized {}

/// `GET /metrics`: Prometheus text, gauges read at scrape time.
fn metrics_response(relay: &Relay) -> Response {
    let (known, attached) = relay.registry().counts();
    let (queued, queued_bytes) = relay.queue().totals();
    metrics::gauge!(crate::telemetry::CHANNELS).set(known as f64);
    metrics::gauge!(crate::telemetry::CHANNELS_ATTACHED).set(attached as f64);
    metrics::gauge!(crate::telemetry::QUEUE_DELIVERIES).set(queued as f64);
    metrics::gauge!(crate::telemetry::QUEUE_BYTES).set(queued_bytes as f64);
    let mut response = Response::new(crate::telemetry::render().into());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

fn readiness(relay: &Relay) -> Response {
    if relay.is_draining() {
        let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        set_retry_after(&mut response);
        return response;
    }
    json_response(StatusCode::OK, &serde_json::json!({"status": "ready"}))
}

async fn rejection_response(rejection: Rejection) -> Result<Response, Infallible> {
    let response = if rejection.find::<Unauthorized>().is_some() {
        error_response(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the cluster secret as a bearer token",
        )
    } else if rejection.is_not_found() {
        error_response(StatusCode::NOT_FOUND, "not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else {
        debug!(?rejection, "request rejected");
        error_response(StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(response)
}

/// A JSON response with the given status.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A JSON `{"error": message}` response; `message` is for senders, so it
/// never holds addresses, internal errors or secrets.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// Tells a sender when to try again after a 503.
pub fn set_retry_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
}
