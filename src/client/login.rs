//! `wow-client login`: signs in to an auth-mode server and stores the
//! session token in the state dir, where `/new` and channel-token renewal
//! find it.
//!
//! The server runs GitHub's device flow (the client holds no GitHub
//! credentials): the user opens GitHub's page and types the code shown
//! here while this polls the server at the interval it asks for. Where the
//! OAuth App has device flow off, the user signs in in a browser at
//! `/auth/github` and stores the token it shows with `--token`.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::{ClientError, StateDir};
use crate::Secret;
use crate::config::ClientConfig;

/// Longest wait between two polls, whatever the server says.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// A sign-in to one server.
#[derive(Debug)]
pub struct Login {
    server_url: String,
    state: StateDir,
    http: reqwest::Client,
}

/// `POST /auth/device`'s answer.
#[derive(Deserialize)]
struct Started {
    id: String,
    verification_uri: String,
    user_code: String,
    interval: u64,
    expires_in: u64,
}

/// `POST /auth/device/poll`'s answer, and any JSON error.
#[derive(Deserialize)]
struct Answer {
    status: Option<String>,
    interval: Option<u64>,
    token: Option<String>,
    error: Option<String>,
    code: Option<String>,
    login_url: Option<String>,
}

/// What the client can read of a session token without the server's key.
#[derive(Deserialize)]
struct SessionView {
    sub: String,
    kind: String,
    exp: u64,
}

/// Signs in to every server of `config`'s profiles in turn: stores `token`
/// when given, else runs the device flow. Tells the user what to do on `out`.
///
/// # Errors
///
/// A [`ClientError`] whose text says what went wrong and how to fix it.
pub async fn run(
    config: &ClientConfig,
    token: Option<Secret>,
    out: &mut (dyn Write + Send),
) -> Result<(), ClientError> {
    let mut servers: Vec<(&str, bool)> = Vec::new();
    for profile in &config.profiles {
        if !servers.iter().any(|(url, _)| *url == profile.server_url) {
            servers.push((&profile.server_url, profile.insecure));
        }
    }
    if servers.is_empty() {
        return Err(ClientError::Config(
            "no server to sign in to: pass --server-url or configure server_url".to_owned(),
        ));
    }
    for (server_url, insecure) in servers {
        let login = Login::new(server_url, insecure, StateDir::new(&config.state_dir))?;
        match &token {
            Some(token) => login.store(token, out)?,
            None => login.device_flow(out).await?,
        }
        for profile in &config.profiles {
            if profile.server_url == server_url && !profile.token.is_empty() && token.is_none() {
                say(
                    out,
                    &format!(
                        "note: profile {} sets `token` (or `token_file`), which is used instead of the stored session",
                        profile.name
                    ),
                );
            }
        }
    }
    Ok(())
}

impl Login {
    /// A sign-in to `server_url`, storing into `state`.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built.
    pub fn new(server_url: &str, insecure: bool, state: StateDir) -> Result<Self, ClientError> {
        let http = super::server_http(insecure)?;
        Ok(Login {
            server_url: server_url.trim_end_matches('/').to_owned(),
            state,
            http,
        })
    }

    /// Stores a session token the user pasted (from the `/auth/callback` page).
    ///
    /// # Errors
    ///
    /// When the token is not a live session token, or cannot be stored.
    pub fn store(&self, token: &Secret, out: &mut (dyn Write + Send)) -> Result<(), ClientError> {
        let server = &self.server_url;
        let view = read_session(token).ok_or_else(|| {
            ClientError::Config(format!(
                "the token is not a wow session token: sign in at {server}/auth/github and copy the token it shows"
            ))
        })?;
        if view.exp <= unix_now() {
            return Err(ClientError::Config(format!(
                "the session token expired at {}: sign in again at {server}/auth/github",
                timestamp(view.exp)
            )));
        }
        self.save(token, &view, out)
    }

    /// Runs the device flow through the server and stores the session.
    ///
    /// # Errors
    ///
    /// When the server or GitHub refuses, the code expires, or the token
    /// cannot be stored.
    pub async fn device_flow(&self, out: &mut (dyn Write + Send)) -> Result<(), ClientError> {
        let server = &self.server_url;
        let url = format!("{server}/auth/device");
        let response = self.http.post(&url).send().await.map_err(|error| {
            ClientError::Runtime(format!(
                "cannot reach {server}: {:#}; check --server-url",
                anyhow::Error::from(error)
            ))
        })?;
        let status = response.status();
        if !status.is_success() {
            let answer = read_answer(response).await;
            return Err(self.cannot_start(status, answer, out));
        }
        let started: Started = response.json().await.map_err(|error| {
            ClientError::Runtime(format!("{url} sent an unreadable answer: {error}"))
        })?;

        let expires = Duration::from_secs(started.expires_in);
        say(
            out,
            &format!(
                "To sign in to {server}, open {} and enter the code {}",
                started.verification_uri, started.user_code
            ),
        );
        say(
            out,
            &format!(
                "Waiting for GitHub (the code expires in {})...",
                humantime::format_duration(expires)
            ),
        );
        let token = self.wait(&started, Instant::now() + expires, out).await?;
        let view = read_session(&token).ok_or_else(|| {
            ClientError::Runtime(format!(
                "{server} answered a token that is not a session token"
            ))
        })?;
        self.save(&token, &view, out)
    }

    /// Polls until the sign-in ends or `deadline` passes.
    async fn wait(
        &self,
        started: &Started,
        deadline: Instant,
        out: &mut (dyn Write + Send),
    ) -> Result<Secret, ClientError> {
        let server = &self.server_url;
        let url = format!("{server}/auth/device/poll");
        let mut interval = Duration::from_secs(started.interval.max(1)).min(MAX_INTERVAL);
        loop {
            if Instant::now() + interval > deadline {
                return Err(expired());
            }
            tokio::time::sleep(interval).await;
            let sent = self
                .http
                .post(&url)
                .json(&serde_json::json!({ "id": started.id }))
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    warn!(error = %anyhow::Error::from(error), "cannot reach the server: polling again");
                    continue;
                }
            };
            let status = response.status();
            let answer = read_answer(response).await;
            match (status, answer.status.as_deref()) {
                (StatusCode::OK, Some("complete")) => {
                    let token = answer.token.filter(|token| !token.is_empty());
                    return token.map(Secret::new).ok_or_else(|| {
                        ClientError::Runtime(format!("{server} answered no session token"))
                    });
                }
                (StatusCode::OK, Some("pending")) => debug!("sign-in pending"),
                (StatusCode::OK, Some("slow_down")) => {
                    let next = answer
                        .interval
                        .map_or(interval + Duration::from_secs(5), Duration::from_secs);
                    interval = next.max(interval).min(MAX_INTERVAL);
                    info!(interval = ?interval, "asked to slow down: polling less often");
                    continue;
                }
                (_, Some("expired")) => return Err(expired()),
                (_, Some("disabled")) => return Err(self.cannot_start(status, answer, out)),
                (_, Some("denied" | "forbidden")) => {
                    return Err(ClientError::Config(message(
                        &answer,
                        "the sign-in was refused",
                    )));
                }
                (status, _) if status.is_server_error() => {
                    return Err(ClientError::Runtime(format!(
                        "{server} could not complete the sign-in ({status}): {}",
                        message(&answer, "no details")
                    )));
                }
                (status, _) => {
                    return Err(ClientError::Runtime(format!(
                        "{server} answered the sign-in poll with {status}: {}",
                        message(&answer, "no details")
                    )));
                }
            }
            if let Some(seconds) = answer.interval {
                interval = Duration::from_secs(seconds.max(1))
                    .max(interval)
                    .min(MAX_INTERVAL);
            }
        }
    }

    /// The error for a server that did not start (or cannot finish) a
    /// device sign-in.
    fn cannot_start(
        &self,
        status: StatusCode,
        answer: Answer,
        out: &mut (dyn Write + Send),
    ) -> ClientError {
        let server = &self.server_url;
        if status == StatusCode::NOT_FOUND {
            return ClientError::Config(format!(
                "{server} does not use sign-in (no /auth/device): wow-client needs no login for it"
            ));
        }
        if answer.code.as_deref() == Some("device_flow_disabled") {
            let login_url = answer
                .login_url
                .unwrap_or_else(|| format!("{server}/auth/github"));
            say(
                out,
                &format!("Open {login_url} in a browser to sign in with GitHub."),
            );
            return ClientError::Config(format!(
                "device flow is off in the GitHub OAuth App of {server}: sign in at {login_url}, then run `wow-client login --server-url {server} --token TOKEN` with the token it shows"
            ));
        }
        ClientError::Runtime(format!(
            "{server} could not start a sign-in ({status}): {}",
            message(&answer, "no details")
        ))
    }

    fn save(
        &self,
        token: &Secret,
        view: &SessionView,
        out: &mut (dyn Write + Send),
    ) -> Result<(), ClientError> {
        let path = self
            .state
            .save_session(&self.server_url, token)
            .map_err(|error| ClientError::State(format!("{error:#}")))?;
        info!(server = %self.server_url, login = %view.sub, "session stored");
        say(
            out,
            &format!(
                "Signed in to {} as {}; the session is stored in {} and valid until {}",
                self.server_url,
                view.sub,
                path.display(),
                timestamp(view.exp)
            ),
        );
        Ok(())
    }
}

fn expired() -> ClientError {
    ClientError::Config(
        "the sign-in code expired before it was entered: run `wow-client login` again".to_owned(),
    )
}

async fn read_answer(response: reqwest::Response) -> Answer {
    let empty = Answer {
        status: None,
        interval: None,
        token: None,
        error: None,
        code: None,
        login_url: None,
    };
    match response.bytes().await {
        Ok(body) => serde_json::from_slice(&body).unwrap_or(empty),
        Err(_) => empty,
    }
}

fn message(answer: &Answer, default: &str) -> String {
    answer.error.clone().unwrap_or_else(|| default.to_owned())
}

/// The claims of a session token, read without checking the signature
/// (only the server can): enough to tell the user who and until when.
fn read_session(token: &Secret) -> Option<SessionView> {
    let view: SessionView = jsonwebtoken::dangerous::insecure_decode_claims(token.expose()).ok()?;
    (view.kind == "session").then_some(view)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn timestamp(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

/// One line for the user; a closed stdout is no reason to fail a sign-in.
fn say(out: &mut (dyn Write + Send), line: &str) {
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: serde_json::Value) -> Secret {
        let key = jsonwebtoken::EncodingKey::from_secret(b"k").unwrap();
        Secret::new(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap())
    }

    #[test]
    fn only_live_session_tokens_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let login = Login::new("http://127.0.0.1:9/", false, StateDir::new(dir.path())).unwrap();
        let mut out = Vec::new();
        let later = unix_now() + 3600;

        let channel =
            token(serde_json::json!({"sub": "x", "kind": "channel", "iat": 1, "exp": later}));
        let error = login.store(&channel, &mut out).unwrap_err();
        assert!(error.to_string().contains("/auth/github"), "{error}");
        assert!(login.store(&Secret::new("garbage"), &mut out).is_err());
        let old =
            token(serde_json::json!({"sub": "octocat", "kind": "session", "iat": 1, "exp": 2}));
        assert!(
            login
                .store(&old, &mut out)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );

        let good =
            token(serde_json::json!({"sub": "octocat", "kind": "session", "iat": 1, "exp": later}));
        login.store(&good, &mut out).unwrap();
        let printed = String::from_utf8(out).unwrap();
        assert!(printed.contains("as octocat"), "{printed}");
        assert!(!printed.contains(good.expose()), "{printed}");
        let stored = StateDir::new(dir.path())
            .load_session("http://127.0.0.1:9")
            .unwrap();
        assert_eq!(stored, Some(good));
    }
}
