//! `GET /new` issues channels; `GET /ws/{id}` attaches a client to one;
//! `POST /channels/{id}/token` renews a channel's token (auth mode).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{info, warn};
use uuid::Uuid;
use warp::Reply;
use warp::reply::Response;

use super::auth::{SessionClaims, TokenError, bearer};
use super::http::{RequestMeta, UpgradeSlot, error_response, json_response};
use super::session::{self, MAX_STREAMS, Session};
use super::{Relay, redeliver};
use crate::config::OfflinePolicy;
use crate::protocol::{Multiplexer, Side, negotiate_version};
use crate::telemetry;

/// Options a client may give with `/new` and `/ws/{id}`.
#[derive(Debug, Default, Deserialize)]
pub struct ChannelOptions {
    /// `queue` or `reject`: what the server does with the channel's
    /// webhooks while this client is away; `default`: the server's own
    /// `channels.offline` (a policy the client stated before is dropped).
    pub offline: Option<String>,
}

impl ChannelOptions {
    /// The requested policy: `None` when the client stated none, `Some(None)`
    /// for the server's default; a bad value is the client's error message.
    fn offline(&self) -> Result<Option<Option<OfflinePolicy>>, String> {
        match self.offline.as_deref() {
            None => Ok(None),
            Some("default") => Ok(Some(None)),
            Some(policy) => policy.parse().map(|policy| Some(Some(policy))),
        }
    }
}

/// `GET /new`: issues a channel and its token. In auth mode the request
/// needs a session token; the channel then belongs to its login and its
/// token expires after `auth.channel_ttl`.
pub fn new_channel(
    options: ChannelOptions,
    relay: Arc<Relay>,
    headers: HeaderMap,
    meta: RequestMeta,
) -> Response {
    let config = relay.config();
    let session = if config.auth.enabled() {
        match check_session(&relay, &headers) {
            Ok(session) => Some(session),
            Err(message) => return error_response(StatusCode::UNAUTHORIZED, message),
        }
    } else {
        None
    };
    let offline = match options.offline() {
        Ok(offline) => offline,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error),
    };
    let id = match relay.registry().create(offline.flatten()) {
        Ok(id) => id,
        Err(full) => {
            warn!(error = %full, "refused a new channel");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server cannot take more channels",
            );
        }
    };
    let owner = session.as_ref().map(|session| session.sub.as_str());
    let ttl = session.as_ref().map(|_| config.auth.channel_ttl);
    let token = relay.tokens().issue_channel(id, owner, ttl);
    let webhook_url = format!("{}/webhook/{id}", relay.public_base(&headers, &meta));
    info!(channel = %id, url = %webhook_url, owner = owner.unwrap_or(""), "channel issued");
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "channel_id": id,
            "token": token,
            "webhook_url": webhook_url,
        }),
    )
}

/// The body of `POST /channels/{id}/token`.
#[derive(Debug, Deserialize)]
pub struct RenewRequest {
    /// The channel's current token, expired or not.
    pub token: String,
}

/// `POST /channels/{id}/token`: a new token for the same channel, so its URL
/// never changes. Needs a valid session of the channel's owner and the old
/// token (checked for signature, not expiry) as proof of the channel.
pub fn renew_token(
    channel: String,
    request: RenewRequest,
    relay: Arc<Relay>,
    headers: HeaderMap,
    meta: RequestMeta,
) -> Response {
    let config = relay.config();
    if !config.auth.enabled() {
        return error_response(
            StatusCode::NOT_FOUND,
            "this server does not use sign-in: its channel tokens do not expire",
        );
    }
    let session = match check_session(&relay, &headers) {
        Ok(session) => session,
        Err(message) => return error_response(StatusCode::UNAUTHORIZED, message),
    };
    let Ok(channel) = Uuid::parse_str(&channel) else {
        return error_response(StatusCode::NOT_FOUND, "unknown channel");
    };
    let Ok((holder, claims)) = relay.tokens().verify_channel_for_renewal(&request.token) else {
        return error_response(StatusCode::UNAUTHORIZED, "invalid channel token");
    };
    if holder != channel {
        return error_response(
            StatusCode::FORBIDDEN,
            "the token belongs to another channel",
        );
    }
    if claims.owner.as_deref() != Some(session.sub.as_str()) {
        warn!(%channel, login = %session.sub, "renewal refused: not the channel's owner");
        return error_response(
            StatusCode::FORBIDDEN,
            "this channel belongs to another GitHub user",
        );
    }
    let token =
        relay
            .tokens()
            .issue_channel(channel, Some(&session.sub), Some(config.auth.channel_ttl));
    let webhook_url = format!("{}/webhook/{channel}", relay.public_base(&headers, &meta));
    info!(%channel, owner = %session.sub, "channel token renewed");
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "channel_id": channel,
            "token": token,
            "webhook_url": webhook_url,
        }),
    )
}

/// The session behind the request's bearer token, or why there is none
/// (the message of a 401 that says what to do).
fn check_session(relay: &Relay, headers: &HeaderMap) -> Result<SessionClaims, &'static str> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok()),
    );
    let Some(token) = token else {
        return Err("sign-in required: run `wow-client login`");
    };
    relay
        .tokens()
        .verify_session(token)
        .map_err(|error| match error {
            TokenError::Expired => "the session token has expired: run `wow-client login`",
            TokenError::Invalid => "invalid session token: run `wow-client login`",
        })
}

/// A held channel is handed to a new attach when its connection does not
/// answer a ping within this (a laptop waking from sleep must not wait out
/// a dead socket).
const REPLACE_PROBE: Duration = Duration::from_secs(5);

/// `GET /ws/{id}`: checks the channel token and upgrades to the tunnel.
pub async fn attach(
    channel: String,
    options: ChannelOptions,
    relay: Arc<Relay>,
    headers: HeaderMap,
    meta: RequestMeta,
    upgrade: Option<UpgradeSlot>,
) -> Response {
    let Some(key) = websocket_key(&headers) else {
        return error_response(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    let Ok(channel) = Uuid::parse_str(&channel) else {
        return error_response(StatusCode::NOT_FOUND, "unknown channel");
    };
    if let Err((status, message)) = check_token(&relay, channel, &headers) {
        return error_response(status, message);
    }
    let offline = match options.offline() {
        Ok(offline) => offline,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error),
    };
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .map(|value| value.to_str().unwrap_or("?"));
    let protocol = match negotiate_version(offered) {
        Ok(protocol) => protocol,
        Err(offered) => {
            warn!(%channel, %offered, "client offered no protocol version this server speaks");
            return error_response(
                StatusCode::BAD_REQUEST,
                "unsupported protocol version: upgrade wow-server or use an older wow-client",
            );
        }
    };

    let held_before = relay
        .registry()
        .get(channel)
        .is_some_and(|known| known.last_attached.is_some());
    let (mux, frames) = Multiplexer::new(Side::Server, MAX_STREAMS);
    let session = Arc::new(Session::new(channel, Some(meta.peer), mux));
    if let Err(holder) = relay.registry().attach(&session) {
        if holder.link().probe(REPLACE_PROBE).await {
            return error_response(StatusCode::CONFLICT, "channel is already attached");
        }
        if relay.registry().replace(Some(&holder), &session).is_err() {
            return error_response(StatusCode::CONFLICT, "channel is already attached");
        }
        info!(%channel, "replacing a connection that stopped answering");
        holder.close(CloseCode::Away);
    }
    let Some(on_upgrade) = upgrade.as_ref().and_then(UpgradeSlot::take) else {
        relay.registry().detach(&session);
        return error_response(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    info!(%channel, peer = %meta.peer, "client attached");
    metrics::counter!(telemetry::ATTACHES).increment(1);
    if held_before {
        metrics::counter!(telemetry::RECONNECTS).increment(1);
    }
    if let Some(offline) = offline {
        relay.registry().set_offline(channel, offline);
    }

    let config = session::socket_config(relay.config().limits.max_header_bytes);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                tokio::spawn(redeliver::run(relay.clone(), session.clone()));
                session.clone().run(socket, frames).await;
            }
            Err(error) => warn!(%channel, error = %error, "WebSocket upgrade failed"),
        }
        session.mux().close();
        session.end();
        relay.registry().detach(&session);
    });

    switching_protocols(&key, protocol)
}

/// Refuses the attach unless the request carries this channel's token.
/// An unknown channel is re-registered when its token is valid, so a server
/// that lost its state never changes a URL. An expired token is 401 even
/// for an unknown channel: it was signed here, and its holder can renew it.
fn check_token(
    relay: &Relay,
    channel: Uuid,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let verified = token.map(|token| relay.tokens().verify_channel(token));
    let known = relay.registry().contains(channel);
    match verified {
        Some(Ok((holder, _))) if holder == channel => {
            if !known {
                info!(%channel, "channel re-registered from its token");
            }
            Ok(())
        }
        Some(Err(TokenError::Expired)) => Err((
            StatusCode::UNAUTHORIZED,
            "the channel token has expired: renew it with a session token",
        )),
        _ if !known => Err((StatusCode::NOT_FOUND, "unknown channel")),
        Some(Ok(_)) => Err((
            StatusCode::FORBIDDEN,
            "the token belongs to another channel",
        )),
        Some(Err(TokenError::Invalid)) | None => {
            Err((StatusCode::UNAUTHORIZED, "missing or invalid channel token"))
        }
    }
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request.
fn websocket_key(headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .unwrap_or("")
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    let upgrade =
        has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade");
    let version = headers.get(header::SEC_WEBSOCKET_VERSION)? == "13";
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    (upgrade && version).then(|| key.clone())
}

fn switching_protocols(key: &HeaderValue, protocol: Option<&'static str>) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(key.as_bytes());
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
}
