//! Channel-token renewal: a new token for the same channel from the
//! session token, so an expiring token never changes the webhook URL.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Deserialize;
use tracing::{info, warn};

use super::{AttachError, NewChannel, Tunnel, error_message};
use crate::Secret;
use crate::client::ClientError;
use crate::client::state::ChannelRecord;

impl Tunnel {
    /// The session token for this profile's server: the profile's `token`
    /// when set, else the one `wow-client login` stored.
    pub(super) fn session(&self) -> Result<Option<Secret>, AttachError> {
        if !self.profile.token.is_empty() {
            return Ok(Some(self.profile.token.clone()));
        }
        self.state
            .load_session(&self.profile.server_url)
            .map_err(|error| AttachError::Refused(ClientError::State(format!("{error:#}"))))
    }

    /// Renews a saved channel token that has a third of its life or less
    /// left, when a session allows; otherwise keeps it as it is.
    pub(super) async fn renew_early(&self, saved: ChannelRecord) -> ChannelRecord {
        if !expires_soon(&saved.token, unix_now()) {
            return saved;
        }
        if !matches!(self.session(), Ok(Some(_))) {
            return saved;
        }
        let refusal = ClientError::ChannelRefused(String::new());
        match self.renew(&saved, refusal).await {
            Ok(renewed) => renewed,
            Err(AttachError::Retry(cause)) => {
                warn!(%cause, "cannot renew the channel token yet: using it while it lasts");
                saved
            }
            Err(AttachError::Refused(error) | AttachError::Unauthorized(error)) => {
                warn!(error = %error, "cannot renew the channel token: using it while it lasts");
                saved
            }
        }
    }

    /// A new token for the same channel from `POST /channels/{id}/token`,
    /// saved at once. `refusal` is the error to give when there is nothing
    /// to renew with.
    pub(super) async fn renew(
        &self,
        channel: &ChannelRecord,
        refusal: ClientError,
    ) -> Result<ChannelRecord, AttachError> {
        let server = &self.profile.server_url;
        let profile = &self.profile.name;
        let Some(session) = self.session()? else {
            if expires_soon(&channel.token, unix_now()) {
                return Err(AttachError::Refused(ClientError::ChannelRefused(format!(
                    "the channel token of profile {profile} has expired: run `wow-client login --server-url {server}` and start again; the webhook URL stays the same"
                ))));
            }
            return Err(AttachError::Refused(refusal));
        };
        let url = format!(
            "{}/channels/{}/token",
            server.trim_end_matches('/'),
            channel.channel_id
        );
        let response = self
            .http
            .post(&url)
            .bearer_auth(session.expose())
            .json(&serde_json::json!({ "token": channel.token.expose() }))
            .send()
            .await
            .map_err(|error| AttachError::Retry(format!("{:#}", anyhow::Error::from(error))))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(AttachError::Refused(refusal));
        }
        if status == StatusCode::UNAUTHORIZED {
            let message = error_message(response.bytes().await.unwrap_or_default());
            return Err(AttachError::Refused(ClientError::ChannelRefused(format!(
                "{server} refused to renew the channel token of profile {profile} ({status}): {}, then start wow-client again; the webhook URL stays the same",
                with_login_fix(&message, server)
            ))));
        }
        if status == StatusCode::FORBIDDEN {
            let message = error_message(response.bytes().await.unwrap_or_default());
            return Err(AttachError::Refused(ClientError::ChannelRefused(format!(
                "{server} refused to renew the channel token of profile {profile} ({status}: {message}); sign in as the channel's owner with `wow-client login`, or run `wow-client --reset-channel` to get a new webhook URL"
            ))));
        }
        if !status.is_success() {
            return Err(AttachError::Retry(format!("{url} answered {status}")));
        }
        let body: NewChannel = response.json().await.map_err(|error| {
            AttachError::Retry(format!("{url} sent an unreadable answer: {error}"))
        })?;
        let record = ChannelRecord {
            channel_id: body.channel_id,
            token: Secret::new(body.token),
            webhook_url: body.webhook_url,
        };
        self.state
            .save_channel(profile, server, &record)
            .map_err(|error| AttachError::Refused(ClientError::State(format!("{error:#}"))))?;
        info!(channel = %record.channel_id, "channel token renewed");
        Ok(record)
    }
}

/// The server's message, with the `wow-client login` fix added when it
/// does not name one already.
pub(super) fn with_login_fix(message: &str, server: &str) -> String {
    if message.contains("wow-client login") {
        message.replace(
            "`wow-client login`",
            &format!("`wow-client login --server-url {server}`"),
        )
    } else {
        format!("{message}; run `wow-client login --server-url {server}` to sign in")
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Whether a channel token has a third of its lifetime or less left (an
/// expired one included). Tokens without an expiry never do. The claims are
/// read without checking the signature: only the server can check it, and
/// this only decides when to ask it for a new one.
fn expires_soon(token: &Secret, now: u64) -> bool {
    #[derive(Deserialize)]
    struct Lifetime {
        iat: Option<u64>,
        exp: Option<u64>,
    }
    let Ok(claims) = jsonwebtoken::dangerous::insecure_decode_claims::<Lifetime>(token.expose())
    else {
        return false;
    };
    let Some(exp) = claims.exp else {
        return false;
    };
    let iat = claims.iat.unwrap_or(exp).min(exp);
    now.saturating_add((exp - iat) / 3) >= exp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_in_the_last_third_of_their_life() {
        let key = jsonwebtoken::EncodingKey::from_secret(b"k").unwrap();
        let token = |iat: u64, exp: Option<u64>| {
            let claims = serde_json::json!({"sub": "x", "kind": "channel", "iat": iat, "exp": exp});
            Secret::new(
                jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap(),
            )
        };
        assert!(!expires_soon(&token(0, Some(300)), 100));
        assert!(expires_soon(&token(0, Some(300)), 200));
        assert!(expires_soon(&token(0, Some(300)), 400));
        assert!(!expires_soon(&token(0, None), u64::MAX));
        assert!(!expires_soon(&Secret::new("not a jwt"), 0));
    }

    #[test]
    fn login_fixes_name_the_server() {
        assert_eq!(
            with_login_fix(
                "the session token has expired: run `wow-client login`",
                "http://s"
            ),
            "the session token has expired: run `wow-client login --server-url http://s`"
        );
        assert_eq!(
            with_login_fix("nope", "http://s"),
            "nope; run `wow-client login --server-url http://s` to sign in"
        );
    }
}
