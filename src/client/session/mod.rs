//! One profile's tunnel: get its channel, attach, serve requests, and
//! reconnect forever with backoff.
//!
//! On an auth-mode server the session token (the profile's `token`, else
//! the one `wow-client login` stored for the server) asks `/new` for the
//! channel, and renews the channel's token for the same channel when it
//! expires or nears its expiry, so the webhook URL never changes.

mod renewal;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderValue, SEC_WEBSOCKET_PROTOCOL, USER_AGENT};
use hyper_util::client::proxy::matcher::Matcher;
use rand::Rng;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, trace, warn};

use self::renewal::with_login_fix;
use super::Shared;
use super::forward::Forwarder;
use super::history::Recorder;
use super::output::Event;
use super::state::{ChannelRecord, StateDir};
use super::status::{ProfileStatus, StatusBoard, TunnelState};
use super::{ClientError, tls};
use crate::Secret;
use crate::config::Profile;
use crate::link::{Ended, Link};
use crate::protocol::{Multiplexer, PROTOCOL_V1, ResetCode, ServerMessage, Side};
use crate::telemetry;

/// The first reconnect waits about this long; each further one doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// No reconnect waits longer than this.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// On shutdown, in-flight deliveries get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Most requests in flight on one tunnel at once.
const MAX_STREAMS: usize = 1024;

/// Longest frame the client accepts from the server, in bytes.
const MAX_MESSAGE: usize = 16 << 20;

/// A profile's tunnel and everything it needs.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The profile as the tunnel connected with (server, token, TLS).
    profile: Arc<Profile>,
    /// The profile as configured now: each request reads its target and
    /// timeout here, so a reload reaches the next request without a reconnect.
    live: watch::Receiver<Arc<Profile>>,
    state: StateDir,
    http: reqwest::Client,
    forwarder: Forwarder,
    events: mpsc::UnboundedSender<Event>,
    status: StatusBoard,
    history: Option<Recorder>,
    proxies: Arc<Matcher>,
}

/// Why an attempt to attach did not lead to a running tunnel.
#[derive(Debug)]
enum AttachError {
    /// The server refused the channel for good; retrying cannot help.
    Refused(ClientError),
    /// Something passing (network, 5xx, channel still held); retry.
    Retry(String),
    /// The channel token was not accepted (401): renewing it may help;
    /// otherwise the refusal stands.
    Unauthorized(ClientError),
}

/// What an attempt achieved.
enum Progress {
    /// A channel to attach to (saved or new).
    HaveChannel,
    /// A connection was served until it ended.
    Served(Served),
}

/// How a served connection ended.
enum Served {
    Ended(Ended),
    Shutdown,
}

#[derive(Deserialize)]
struct NewChannel {
    channel_id: uuid::Uuid,
    token: String,
    webhook_url: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

impl Tunnel {
    /// A tunnel for `profile`; nothing happens until [`Tunnel::run`].
    ///
    /// # Errors
    ///
    /// When the HTTP client for the server cannot be built.
    pub fn new(profile: Profile, shared: Shared) -> Result<Self, ClientError> {
        let (_fixed, live) = watch::channel(Arc::new(profile));
        Tunnel::live(live, shared)
    }

    /// A tunnel that connects with the profile `live` holds now and reads
    /// each request's target and timeout from it as it changes.
    ///
    /// # Errors
    ///
    /// When the HTTP client for the server cannot be built.
    pub fn live(live: watch::Receiver<Arc<Profile>>, shared: Shared) -> Result<Self, ClientError> {
        let profile = live.borrow().clone();
        let http = crate::client::server_http(profile.insecure)?;
        Ok(Tunnel {
            profile,
            live,
            state: shared.state,
            http,
            forwarder: shared.forwarder,
            events: shared.events,
            status: shared.status,
            history: shared.history,
            proxies: Arc::new(Matcher::from_env()),
        })
    }

    /// Runs until `shutdown` (then drains in-flight deliveries) or until the
    /// server refuses the channel for good.
    ///
    /// # Errors
    ///
    /// [`ClientError::ChannelRefused`] when the server refuses the channel
    /// or the token; every passing failure is retried instead.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ClientError> {
        let span = tracing::info_span!("tunnel", profile = %self.profile.name);
        let status = self.status.clone();
        let name = self.profile.name.clone();
        status.set(
            &name,
            ProfileStatus {
                state: TunnelState::Starting,
                server_url: self.profile.server_url.clone(),
                webhook_url: None,
                target: self.live.borrow().target.to_string(),
            },
        );
        let result = self.run_inner(shutdown).instrument(span).await;
        match &result {
            Ok(()) => status.remove(&name),
            Err(error) => status.update(&name, |entry| {
                entry.state = TunnelState::Refused {
                    reason: error.to_string(),
                }
            }),
        }
        result
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<(), ClientError> {
        let mut attempt: u32 = 0;
        let mut channel: Option<ChannelRecord> = None;
        // One renewal per refusal: a renewed token that is refused too is final.
        let mut renewed = false;
        loop {
            let outcome = match channel.clone() {
                Some(record) => self.attach_and_serve(&record, attempt, &shutdown).await,
                None => self.channel().await.map(|record| {
                    channel = Some(record);
                    Progress::HaveChannel
                }),
            };
            let cause = match outcome {
                Ok(Progress::HaveChannel) => continue,
                Ok(Progress::Served(Served::Shutdown)) => return Ok(()),
                Ok(Progress::Served(Served::Ended(ended))) => {
                    attempt = 0;
                    renewed = false;
                    if ended == Ended::PeerClosed(Some(CloseCode::Away)) {
                        info!(reason = %ended, "server is going away: reconnecting now");
                        continue;
                    }
                    ended.to_string()
                }
                Err(AttachError::Refused(error)) => return Err(error),
                Err(AttachError::Unauthorized(refusal)) => {
                    let Some(record) = channel.as_ref().filter(|_| !renewed) else {
                        return Err(refusal);
                    };
                    match self.renew(record, refusal).await {
                        Ok(record) => {
                            channel = Some(record);
                            renewed = true;
                            continue;
                        }
                        Err(AttachError::Retry(cause)) => cause,
                        Err(AttachError::Refused(error) | AttachError::Unauthorized(error)) => {
                            return Err(error);
                        }
                    }
                }
                Err(AttachError::Retry(cause)) => cause,
            };
            attempt = attempt.saturating_add(1);
            metrics::counter!(telemetry::CLIENT_RECONNECTS, "profile" => self.profile.name.clone())
                .increment(1);
            self.status.update(&self.profile.name, |entry| {
                entry.state = TunnelState::Reconnecting { attempt }
            });
            let delay = backoff(attempt, &mut rand::rng());
            info!(attempt, delay = ?delay, %cause, "tunnel down: reconnecting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// The channel this profile holds on its server: the saved one, or a
    /// new one from `/new`, saved at once.
    async fn channel(&self) -> Result<ChannelRecord, AttachError> {
        let profile = &self.profile;
        let saved = self
            .state
            .load_channel(&profile.name, &profile.server_url)
            .map_err(|error| AttachError::Refused(ClientError::State(format!("{error:#}"))))?;
        if let Some(saved) = saved {
            return Ok(self.renew_early(saved).await);
        }
        let record = self.new_channel().await?;
        self.state
            .save_channel(&profile.name, &profile.server_url, &record)
            .map_err(|error| AttachError::Refused(ClientError::State(format!("{error:#}"))))?;
        info!(channel = %record.channel_id, "new channel issued");
        Ok(record)
    }

    async fn new_channel(&self) -> Result<ChannelRecord, AttachError> {
        let url = format!("{}/new{}", self.profile.server_url, self.options());
        let mut request = self.http.get(&url);
        if let Some(session) = self.session()? {
            request = request.bearer_auth(session.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|error| AttachError::Retry(format!("{:#}", anyhow::Error::from(error))))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let message = error_message(response.bytes().await.unwrap_or_default());
            let server = &self.profile.server_url;
            return Err(AttachError::Refused(ClientError::ChannelRefused(format!(
                "{server} refused to issue a channel for profile {} ({status}): {}",
                self.profile.name,
                with_login_fix(&message, server)
            ))));
        }
        if !status.is_success() {
            return Err(AttachError::Retry(format!("{url} answered {status}")));
        }
        let body: NewChannel = response.json().await.map_err(|error| {
            AttachError::Retry(format!("{url} sent an unreadable answer: {error}"))
        })?;
        Ok(ChannelRecord {
            channel_id: body.channel_id,
            token: Secret::new(body.token),
            webhook_url: body.webhook_url,
        })
    }

    async fn attach_and_serve(
        &self,
        channel: &ChannelRecord,
        failed_attempts: u32,
        shutdown: &CancellationToken,
    ) -> Result<Progress, AttachError> {
        let socket = tokio::select! {
            socket = self.attach(channel) => socket?,
            () = shutdown.cancelled() => return Ok(Progress::Served(Served::Shutdown)),
        };
        // One message for every attach, so that logs and journal queries
        // find them all; `failed_attempts` tells a recovery apart.
        info!(channel = %channel.channel_id, failed_attempts, "attached");
        self.status.update(&self.profile.name, |entry| {
            entry.state = TunnelState::Attached;
            entry.webhook_url = Some(channel.webhook_url.clone());
        });
        let _closed = self.events.send(Event::Attached {
            profile: self.profile.name.clone(),
            webhook_url: channel.webhook_url.clone(),
            target: self.live.borrow().target.to_string(),
        });
        Ok(Progress::Served(self.serve(socket, shutdown).await))
    }

    async fn attach(&self, channel: &ChannelRecord) -> Result<tls::ClientSocket, AttachError> {
        let url = format!(
            "{}{}",
            websocket_url(&self.profile.server_url, channel.channel_id),
            self.options()
        );
        let mut request = url.as_str().into_client_request().map_err(|error| {
            AttachError::Refused(ClientError::Config(format!(
                "invalid server_url {url:?}: {error}"
            )))
        })?;
        let headers = request.headers_mut();
        let bearer =
            HeaderValue::from_str(&format!("Bearer {}", channel.token.expose())).map_err(|_| {
                AttachError::Refused(ClientError::State(
                    "the saved channel token is damaged: run with --reset-channel".to_owned(),
                ))
            })?;
        headers.insert(AUTHORIZATION, bearer);
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(PROTOCOL_V1),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("wow-client/", env!("CARGO_PKG_VERSION"))),
        );

        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        match tls::connect(request, config, self.profile.insecure, &self.proxies).await {
            Ok(socket) => Ok(socket),
            Err(WsError::Http(response)) => {
                Err(self.refusal(response.status(), response.into_body()))
            }
            Err(error) => Err(AttachError::Retry(error.to_string())),
        }
    }

    /// The query string stating this profile's preferences to the server,
    /// always, so that a policy removed from the configuration is dropped
    /// there too.
    fn options(&self) -> String {
        match self.profile.offline {
            Some(offline) => format!("?offline={offline}"),
            None => "?offline=default".to_owned(),
        }
    }

    /// Whether an HTTP answer to the attach is final or worth a retry.
    fn refusal(&self, status: StatusCode, body: Option<Vec<u8>>) -> AttachError {
        let message = error_message(Bytes::from(body.unwrap_or_default()));
        let server = &self.profile.server_url;
        let profile = &self.profile.name;
        let fix = match status {
            StatusCode::NOT_FOUND => "the server does not know this channel",
            StatusCode::UNAUTHORIZED => {
                return AttachError::Unauthorized(ClientError::ChannelRefused(format!(
                    "{server} refused the channel of profile {profile}: the server does not accept this channel's token ({status}: {message}); run `wow-client --reset-channel` to get a new webhook URL"
                )));
            }
            StatusCode::FORBIDDEN => "the token belongs to another channel",
            StatusCode::BAD_REQUEST => {
                return AttachError::Refused(ClientError::ChannelRefused(format!(
                    "{server} refused the tunnel ({message}); upgrade wow-client or wow-server so they speak the same protocol"
                )));
            }
            _ => return AttachError::Retry(format!("{server} answered {status}: {message}")),
        };
        AttachError::Refused(ClientError::ChannelRefused(format!(
            "{server} refused the channel of profile {profile}: {fix} ({status}); run `wow-client --reset-channel` to get a new webhook URL"
        )))
    }

    /// Serves requests on an attached socket until it ends or `shutdown`.
    async fn serve(&self, socket: tls::ClientSocket, shutdown: &CancellationToken) -> Served {
        let (mux, frames) = Multiplexer::new(Side::Client, MAX_STREAMS);
        let link = Link::new();
        let tasks = TaskTracker::new();
        let accepting = AtomicBool::new(true);
        let on_binary = |bytes: Bytes| {
            let message = ServerMessage::decode(bytes).map_err(|error| error.to_string())?;
            trace!(kind = message.kind(), "frame from server");
            if message == ServerMessage::GoAway {
                info!("server is draining: finishing open requests");
            }
            let incoming = mux
                .receive_server_message(message)
                .map_err(|error| error.to_string())?;
            let Some(incoming) = incoming else {
                return Ok(());
            };
            if !accepting.load(Ordering::Relaxed) {
                incoming
                    .stream
                    .reset(ResetCode::Unavailable, "client is shutting down");
                return Ok(());
            }
            let tunnel = self.clone();
            tasks.spawn(async move {
                let profile = tunnel.live.borrow().clone();
                let entry = tunnel
                    .forwarder
                    .forward(&profile.name, &profile.target, profile.timeout, incoming)
                    .await;
                record_delivery(&entry.delivery);
                let _closed = tunnel.events.send(Event::Delivered(entry.delivery.clone()));
                if let Some(history) = &tunnel.history {
                    history.record(entry);
                }
            });
            Ok(())
        };
        let running = link.run(socket, frames, on_binary);
        tokio::pin!(running);

        tokio::select! {
            ended = &mut running => {
                mux.close();
                return Served::Ended(ended);
            }
            () = shutdown.cancelled() => {}
        }

        // Finish what the app is working on, then say goodbye.
        accepting.store(false, Ordering::Relaxed);
        tasks.close();
        tokio::select! {
            () = tasks.wait() => {}
            () = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("in-flight deliveries did not finish in time"),
            _ = &mut running => {}
        }
        link.close(CloseCode::Normal);
        let _ended = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
        mux.close();
        Served::Shutdown
    }
}

/// Counts a delivery in the client's metrics.
fn record_delivery(delivery: &super::output::Delivery) {
    let profile = delivery.profile.clone();
    let class = telemetry::status_class(delivery.status);
    metrics::counter!(telemetry::CLIENT_DELIVERIES, "profile" => profile.clone(), "class" => class)
        .increment(1);
    metrics::histogram!(telemetry::CLIENT_DELIVERY_DURATION, "profile" => profile)
        .record(delivery.elapsed.as_secs_f64());
}

/// `ws(s)://…/ws/{id}` for a server URL.
fn websocket_url(server_url: &str, channel: uuid::Uuid) -> String {
    let base = if let Some(rest) = server_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = server_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        server_url.to_owned()
    };
    format!("{}/ws/{channel}", base.trim_end_matches('/'))
}

/// The `error` of a JSON error body, or a short note that there was none.
fn error_message(body: Bytes) -> String {
    serde_json::from_slice::<ErrorBody>(&body)
        .map(|body| body.error)
        .unwrap_or_else(|_| "no details".to_owned())
}

/// How long to wait before reconnect attempt `attempt` (1-based):
/// exponential from [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], with
/// jitter between half and all of it so that many clients cut off together
/// do not come back together.
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    let jitter: f64 = rng.random_range(0.5..=1.0);
    ceiling.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn backoff_grows_exponentially_to_its_cap_with_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut previous_ceiling = Duration::ZERO;
        for attempt in 1..=12 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1))
                .min(BACKOFF_CAP);
            for _ in 0..50 {
                let delay = backoff(attempt, &mut rng);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{attempt}: {delay:?}"
                );
            }
            assert!(ceiling >= previous_ceiling);
            previous_ceiling = ceiling;
        }
        assert_eq!(previous_ceiling, BACKOFF_CAP);
        assert!(backoff(u32::MAX, &mut rng) <= BACKOFF_CAP);
    }

    #[test]
    fn websocket_urls_follow_the_server_scheme() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            websocket_url("https://hooks.example.com/", id),
            format!("wss://hooks.example.com/ws/{id}")
        );
        assert_eq!(
            websocket_url("http://127.0.0.1:8080/relay", id),
            format!("ws://127.0.0.1:8080/relay/ws/{id}")
        );
    }
}
