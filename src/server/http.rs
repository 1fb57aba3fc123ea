//! The HTTP front: connection limits, routes and their status codes.
//!
//! Connections are served by hyper through `hyper_util`'s connection
//! builder (not `warp::serve`) so that a request head must arrive within
//! `header_timeout` and cannot exceed `max_header_bytes`; a slow or huge
//! head never pins the server. Each request then passes through
//! [`Frontend`], which records what warp filters cannot see (the peer
//! address, the raw request target, the upgrade handle) and goes to the warp
//! routes.

use std::collections::HashMap;
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

use super::{Relay, attach, auth, webhook};

/// Headers per request at most (hyper's default is 100; some senders send more).
const MAX_HEADERS: usize = 256;

/// Largest JSON body of the auth routes, in bytes (a token and an id).
const MAX_AUTH_BODY: u64 = 16 * 1024;

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
    let relay_for_auth = relay.clone();
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
    let renew = warp::path!("channels" / String / "token")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_AUTH_BODY))
        .and(warp::body::json::<attach::RenewRequest>())
        .and(with_relay.clone())
        .and(warp::header::headers_cloned())
        .and(meta)
        .map(attach::renew_token);
    let internal_channels = warp::path!("internal" / "channels")
        .and(warp::get())
        .and(require_cluster_secret(relay_for_guard.clone()))
        .and(with_relay.clone())
        .map(|relay: Arc<Relay>| internal_channels(&relay));
    let internal_channel = warp::path!("internal" / "channels" / String)
        .and(warp::get())
        .and(require_cluster_secret(relay_for_guard.clone()))
        .and(with_relay.clone())
        .map(|channel: String, relay: Arc<Relay>| internal_channel(&relay, &channel));
    let traefik = warp::path!("traefik-config")
        .and(warp::get())
        .and(require_cluster_secret(relay_for_guard.clone()))
        .and(with_relay.clone())
        .then(|relay: Arc<Relay>| async move { traefik_config(&relay).await });
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
        .or(renew)
        .unify()
        .or(auth_routes(relay_for_auth))
        .unify()
        .or(internal_channels)
        .unify()
        .or(internal_channel)
        .unify()
        .or(traefik)
        .unify()
        .or(webhook)
        .unify()
        .recover(rejection_response)
        .unify()
}

/// `/auth/github`, `/auth/callback`, `/auth/device` and `/auth/device/poll`.
fn auth_routes(relay: Arc<Relay>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with_relay = warp::any().map(move || relay.clone());
    let meta = warp::ext::get::<RequestMeta>();
    let begin = warp::path!("auth" / "github")
        .and(warp::get())
        .and(with_relay.clone())
        .and(warp::header::headers_cloned())
        .and(meta)
        .map(auth::begin);
    let callback = warp::path!("auth" / "callback")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_relay.clone())
        .and(warp::header::headers_cloned())
        .and(meta)
        .then(auth::callback);
    let device = warp::path!("auth" / "device")
        .and(warp::post())
        .and(with_relay.clone())
        .and(warp::header::headers_cloned())
        .and(meta)
        .then(auth::start);
    let poll = warp::path!("auth" / "device" / "poll")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_AUTH_BODY))
        .and(warp::body::json::<auth::PollRequest>())
        .and(with_relay)
        .map(auth::poll);
    begin
        .or(callback)
        .unify()
        .or(device)
        .unify()
        .or(poll)
        .unify()
}

/// A request refused by [`require_cluster_secret`].
#[derive(Debug)]
pub struct MissingClusterSecret;

impl warp::reject::Reject for MissingClusterSecret {}

/// Guards an internal endpoint (`/internal/*`, `/traefik-config`,
/// `/metrics`): when `cluster.secret` is set, the request needs
/// `Authorization: Bearer <cluster.secret>`, or it gets 401 JSON (through
/// [`rejection_response`], which the routes recover with). Without a
/// secret every request passes, and the server warns at start in auth mode.
///
/// ```text
/// let metrics = warp::path!("metrics")
///     .and(require_cluster_secret(relay.clone()))
///     .map(|| …);
/// ```
pub fn require_cluster_secret(
    relay: Arc<Relay>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |authorization: Option<String>| {
            let relay = relay.clone();
            async move {
                let config = relay.config();
                let secret = config.cluster.secret.expose();
                if secret.is_empty() {
                    return Ok(());
                }
                let given = auth::bearer(authorization.as_deref()).unwrap_or("");
                if bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(MissingClusterSecret))
                }
            }
        })
        .untuple_one()
}

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
    let reason = if relay.is_draining() {
        Some("shutting down")
    } else if relay.cluster().is_none_or(|cluster| !cluster.is_joined()) {
        Some("joining the cluster")
    } else {
        None
    };
    if let Some(reason) = reason {
        let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, reason);
        set_retry_after(&mut response);
        return response;
    }
    json_response(StatusCode::OK, &serde_json::json!({"status": "ready"}))
}

/// `GET /internal/channels`: this replica's known and attached channels.
fn internal_channels(relay: &Relay) -> Response {
    match relay.cluster() {
        Some(cluster) => json_response(StatusCode::OK, &cluster.channel_list(relay)),
        None => not_started(),
    }
}

/// `GET /internal/channels/{id}`: what this replica knows of one channel.
fn internal_channel(relay: &Relay, channel: &str) -> Response {
    let Ok(channel) = uuid::Uuid::parse_str(channel) else {
        return error_response(StatusCode::NOT_FOUND, "unknown channel");
    };
    match relay.cluster() {
        Some(cluster) => json_response(StatusCode::OK, &cluster.channel_state(relay, channel)),
        None => not_started(),
    }
}

/// `GET /traefik-config`: the dynamic configuration for the whole cluster.
async fn traefik_config(relay: &Relay) -> Response {
    match relay.cluster() {
        Some(cluster) => json_response(StatusCode::OK, &cluster.traefik_config(relay).await),
        None => not_started(),
    }
}

fn not_started() -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "starting");
    set_retry_after(&mut response);
    response
}

/// Turns a rejection into a JSON error.
pub async fn rejection_response(rejection: Rejection) -> Result<Response, Infallible> {
    let response = if rejection.find::<MissingClusterSecret>().is_some() {
        error_response(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <cluster.secret>",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use crate::config::ServerConfig;
    use crate::server::Server;

    fn relay(secret: &str) -> (tempfile::TempDir, Arc<Relay>) {
        let state = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            state_dir: state.path().to_path_buf(),
            ..ServerConfig::default()
        };
        config.cluster.secret = Secret::new(secret);
        let relay = Server::new(config).unwrap().relay().clone();
        (state, relay)
    }

    /// A tiny internal route behind the guard, as the real ones will be.
    fn probe(relay: Arc<Relay>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
        warp::path!("internal" / "probe")
            .and(require_cluster_secret(relay))
            .map(|| json_response(StatusCode::OK, &serde_json::json!({"ok": true})))
            .recover(rejection_response)
            .unify()
    }

    async fn status(
        route: &(impl Filter<Extract = (Response,), Error = Infallible> + Clone + 'static),
        authorization: Option<&str>,
    ) -> (StatusCode, String) {
        let mut request = warp::test::request().path("/internal/probe");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.reply(route).await;
        (
            response.status(),
            String::from_utf8_lossy(response.body()).into_owned(),
        )
    }

    /// Every async test step is bounded by this.
    const STEP: std::time::Duration = std::time::Duration::from_secs(30);

    #[tokio::test]
    async fn internal_routes_need_the_cluster_secret_when_one_is_set() {
        tokio::time::timeout(STEP, cluster_secret_is_checked())
            .await
            .expect("the test finishes in time");
    }

    async fn cluster_secret_is_checked() {
        let (_state, relay) = relay("cluster-s3cret");
        let route = probe(relay);
        let (code, body) = status(&route, None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(body.contains("cluster.secret"), "{body}");
        assert!(!body.contains("cluster-s3cret"), "{body}");
        assert_eq!(
            status(&route, Some("Bearer wrong")).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&route, Some("Bearer cluster-s3cres")).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&route, Some("Bearer cluster-s3cret")).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn without_a_cluster_secret_internal_routes_are_open() {
        let (_state, relay) = relay("");
        let open = tokio::time::timeout(STEP, status(&probe(relay), None)).await;
        assert_eq!(open.expect("the test finishes in time").0, StatusCode::OK);
    }
}
