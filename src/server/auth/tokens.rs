//! Tokens: channel JWTs that prove who may attach to a channel, and
//! session JWTs that prove who signed in with GitHub.
//!
//! Tokens are HS256 JWTs signed with `auth.jwt_secret`, or, when none is
//! configured, with a random key the server creates once and keeps in its
//! state dir (so tokens stay valid across restarts). Every other algorithm,
//! `alg: none` included, is refused. Expiry allows [`CLOCK_SKEW`] of
//! difference between clocks. A `kind` claim keeps the two apart: a session
//! token never attaches to a channel and a channel token never signs in.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Auth;
use crate::files;

/// How far apart server clocks may be when an expiry is checked.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Name of the generated signing key in the state dir.
const KEY_FILE: &str = "jwt.key";

/// Length of a generated signing key, in bytes.
const KEY_LEN: usize = 32;

/// What a token is for; a session token cannot attach to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Holds one channel.
    Channel,
    /// A signed-in GitHub user (auth mode).
    Session,
}

/// The claims of a channel token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelClaims {
    /// The channel id.
    pub sub: String,
    /// Always [`TokenKind::Channel`].
    pub kind: TokenKind,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at; absent: never (tokens of a server without auth mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// The GitHub login that created the channel, in auth mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The claims of a session token (auth mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The GitHub login.
    pub sub: String,
    /// Always [`TokenKind::Session`].
    pub kind: TokenKind,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is past its expiry.
    #[error("token expired")]
    Expired,
    /// Bad signature, wrong algorithm, wrong kind or not a JWT at all.
    #[error("invalid token")]
    Invalid,
}

/// Signs and checks tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Channel tokens: `sub` required, `exp` checked when present.
    validation: Validation,
    /// Session tokens: `sub` and `exp` required.
    session_validation: Validation,
    /// Channel tokens being renewed: signature checked, expiry not.
    renewal_validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// Signs with `auth.jwt_secret`, or with the key kept in `state_dir`
    /// (created on first use).
    ///
    /// # Errors
    ///
    /// When the key file cannot be read or created.
    pub fn load(auth: &Auth, state_dir: &Path) -> anyhow::Result<Self> {
        if !auth.jwt_secret.is_empty() {
            return Tokens::from_secret(auth.jwt_secret.expose().as_bytes());
        }
        let path = state_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(key) if key.len() >= KEY_LEN => key,
            Ok(_) => anyhow::bail!(
                "signing key {} is too short: delete it to create a new one (all channel tokens change)",
                path.display()
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; KEY_LEN];
                rand::rng().fill_bytes(&mut key);
                files::ensure_private_dir(state_dir)?;
                files::write_private(&path, &key)?;
                key
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        Tokens::from_secret(&key)
    }

    /// Signs with the given key.
    ///
    /// # Errors
    ///
    /// When the key is empty.
    pub fn from_secret(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(!secret.is_empty(), "the JWT signing key is empty");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_exp = true;
        validation.leeway = CLOCK_SKEW.as_secs();
        let mut session_validation = validation.clone();
        session_validation.set_required_spec_claims(&["sub", "exp"]);
        let mut renewal_validation = validation.clone();
        renewal_validation.validate_exp = false;
        Ok(Tokens {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
            session_validation,
            renewal_validation,
        })
    }

    /// Issues a token for `channel`, valid for `ttl` (forever when `None`).
    pub fn issue_channel(
        &self,
        channel: Uuid,
        owner: Option<&str>,
        ttl: Option<Duration>,
    ) -> String {
        let now = unix_now();
        let claims = ChannelClaims {
            sub: channel.to_string(),
            kind: TokenKind::Channel,
            iat: now,
            exp: ttl.map(|ttl| now.saturating_add(ttl.as_secs())),
            owner: owner.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signs any serializable claims")
    }

    /// Checks a channel token and returns the channel it holds.
    ///
    /// # Errors
    ///
    /// [`TokenError::Expired`] or [`TokenError::Invalid`].
    pub fn verify_channel(&self, token: &str) -> Result<(Uuid, ChannelClaims), TokenError> {
        self.channel_claims(token, &self.validation)
    }

    /// Checks a channel token's signature, algorithm and kind but not its
    /// expiry: the proof of ownership a renewal needs.
    ///
    /// # Errors
    ///
    /// [`TokenError::Invalid`].
    pub fn verify_channel_for_renewal(
        &self,
        token: &str,
    ) -> Result<(Uuid, ChannelClaims), TokenError> {
        self.channel_claims(token, &self.renewal_validation)
    }

    fn channel_claims(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<(Uuid, ChannelClaims), TokenError> {
        let claims = self.decode::<ChannelClaims>(token, validation)?;
        if claims.kind != TokenKind::Channel {
            return Err(TokenError::Invalid);
        }
        let channel = Uuid::parse_str(&claims.sub).map_err(|_| TokenError::Invalid)?;
        Ok((channel, claims))
    }

    /// Issues a session token for the GitHub user `login`, valid for `ttl`.
    pub fn issue_session(&self, login: &str, ttl: Duration) -> String {
        let now = unix_now();
        let claims = SessionClaims {
            sub: login.to_owned(),
            kind: TokenKind::Session,
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signs any serializable claims")
    }

    /// Checks a session token and returns its claims (`sub` is the login).
    ///
    /// # Errors
    ///
    /// [`TokenError::Expired`] or [`TokenError::Invalid`] (a channel token
    /// included).
    pub fn verify_session(&self, token: &str) -> Result<SessionClaims, TokenError> {
        let claims = self.decode::<SessionClaims>(token, &self.session_validation)?;
        if claims.kind != TokenKind::Session || claims.sub.is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<T, TokenError> {
        jsonwebtoken::decode::<T>(token, &self.decoding, validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                // The signature is checked before the claims, so an expired
                // token is one this server signed.
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The bearer token of an `Authorization` header value, if it has one.
pub fn bearer(value: Option<&str>) -> Option<&str> {
    let value = value?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn tokens() -> Tokens {
        Tokens::from_secret(b"test-secret-for-unit-tests").unwrap()
    }

    #[test]
    fn a_channel_token_names_its_channel() {
        let channel = Uuid::new_v4();
        let token = tokens().issue_channel(channel, Some("octocat"), None);
        let (verified, claims) = tokens().verify_channel(&token).unwrap();
        assert_eq!(verified, channel);
        assert_eq!(claims.owner.as_deref(), Some("octocat"));
        assert_eq!(claims.exp, None);
    }

    #[test]
    fn expired_forged_and_unsigned_tokens_are_refused() {
        let channel = Uuid::new_v4();
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &ChannelClaims {
                sub: channel.to_string(),
                kind: TokenKind::Channel,
                iat: 1,
                exp: Some(unix_now() - 3600),
                owner: None,
            },
            &EncodingKey::from_secret(b"test-secret-for-unit-tests").unwrap(),
        )
        .unwrap();
        assert_eq!(tokens().verify_channel(&expired), Err(TokenError::Expired));

        let forged = Tokens::from_secret(b"another key")
            .unwrap()
            .issue_channel(channel, None, None);
        assert_eq!(tokens().verify_channel(&forged), Err(TokenError::Invalid));

        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = format!(r#"{{"sub":"{channel}","kind":"channel","iat":1}}"#);
        let unsigned = format!(
            "{}.{}.",
            engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(payload)
        );
        assert_eq!(tokens().verify_channel(&unsigned), Err(TokenError::Invalid));
        assert_eq!(
            tokens().verify_channel("not a jwt"),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn session_and_channel_tokens_never_stand_in_for_each_other() {
        let tokens = tokens();
        let session = tokens.issue_session("octocat", Duration::from_secs(60));
        assert_eq!(tokens.verify_session(&session).unwrap().sub, "octocat");
        assert_eq!(tokens.verify_channel(&session), Err(TokenError::Invalid));

        let channel = tokens.issue_channel(Uuid::new_v4(), Some("octocat"), None);
        assert_eq!(tokens.verify_session(&channel), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_session_is_told_apart_and_renewal_ignores_channel_expiry() {
        let key = EncodingKey::from_secret(b"test-secret-for-unit-tests").unwrap();
        let past = unix_now() - 3600;
        let session = SessionClaims {
            sub: "octocat".into(),
            kind: TokenKind::Session,
            iat: 1,
            exp: past,
        };
        let session = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &session, &key).unwrap();
        assert_eq!(tokens().verify_session(&session), Err(TokenError::Expired));

        let channel = Uuid::new_v4();
        let claims = ChannelClaims {
            sub: channel.to_string(),
            kind: TokenKind::Channel,
            iat: 1,
            exp: Some(past),
            owner: Some("octocat".into()),
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        assert_eq!(tokens().verify_channel(&expired), Err(TokenError::Expired));
        let (renewed, claims) = tokens().verify_channel_for_renewal(&expired).unwrap();
        assert_eq!(renewed, channel);
        assert_eq!(claims.owner.as_deref(), Some("octocat"));

        let forged = Tokens::from_secret(b"another key").unwrap().issue_channel(
            channel,
            Some("octocat"),
            None,
        );
        assert_eq!(
            tokens().verify_channel_for_renewal(&forged),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn the_generated_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::default();
        let token =
            Tokens::load(&auth, dir.path())
                .unwrap()
                .issue_channel(Uuid::new_v4(), None, None);
        let reloaded = Tokens::load(&auth, dir.path()).unwrap();
        assert!(reloaded.verify_channel(&token).is_ok());
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization_values() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
