//! Device sign-in for `wow-client login`: the server runs GitHub's device
//! flow, so the client needs no GitHub credentials.
//!
//! `POST /auth/device` asks GitHub for a user code and answers it with an
//! opaque id of ours; GitHub's device code never leaves the server. A task
//! then polls GitHub at the interval GitHub gives (the `oauth2` crate adds
//! 5 s on each `slow_down`), while the client polls `POST /auth/device/poll`
//! with the id. The client is told the interval the server itself polls at:
//! when GitHub slows the server down, or the client polls too fast, its
//! answer is `slow_down` with the new interval.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use http::header::HeaderMap;
use oauth2::basic::BasicErrorResponseType;
use oauth2::{
    DeviceCodeErrorResponseType, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    TokenResponse,
};
use serde::Deserialize;
use tracing::{Instrument, info, warn};
use warp::reply::Response;

use super::browser::{describe, github_unavailable, misconfigured, no_store};
use super::github::{self, SignInError};
use super::{busy, not_enabled};
use crate::Secret;
use crate::server::Relay;
use crate::server::http::{RequestMeta, json_response};

/// A client that polls sooner than its interval less this is told to slow down.
const POLL_TOLERANCE: Duration = Duration::from_millis(500);

/// RFC 8628: each `slow_down` adds this to the interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// A sign-in whose client stopped polling for this long is given up (and
/// the server stops polling GitHub for it).
const ABANDONED_AFTER: Duration = Duration::from_secs(120);

/// The body of `POST /auth/device/poll`.
#[derive(Debug, Deserialize)]
pub struct PollRequest {
    /// The id `POST /auth/device` answered.
    pub id: String,
}

/// A device sign-in in progress, shared by the task polling GitHub and the
/// client's polls.
#[derive(Debug)]
pub struct DeviceLogin {
    state: Mutex<DeviceState>,
}

#[derive(Debug)]
struct DeviceState {
    outcome: Outcome,
    /// How often the server polls GitHub now.
    github_interval: Duration,
    /// The interval the client was last told.
    told_interval: Duration,
    last_poll: Instant,
}

/// Where a device sign-in stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The user has not approved yet.
    Pending,
    /// Signed in: the session token.
    Complete(Secret),
    /// The code expired before the user approved, or the client went away.
    Expired,
    /// The user refused on GitHub.
    Denied,
    /// GitHub vouched for a user we do not accept.
    NotMember(String),
    /// Device flow is off in the OAuth App: the browser sign-in's address.
    Disabled(String),
    /// GitHub failed; the detail is in the server's log.
    Failed,
}

/// What a client's poll is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Pending(Duration),
    SlowDown(Duration),
    Done(Outcome),
}

impl DeviceLogin {
    fn new(interval: Duration, now: Instant) -> Self {
        DeviceLogin {
            state: Mutex::new(DeviceState {
                outcome: Outcome::Pending,
                github_interval: interval,
                told_interval: interval,
                last_poll: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeviceState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers a client's poll at `now`.
    fn poll(&self, now: Instant) -> Answer {
        let mut state = self.lock();
        let since = now.saturating_duration_since(state.last_poll);
        state.last_poll = now;
        if state.outcome != Outcome::Pending {
            return Answer::Done(state.outcome.clone());
        }
        let mut slow_down = false;
        if since + POLL_TOLERANCE < state.told_interval {
            state.told_interval += SLOW_DOWN_STEP;
            slow_down = true;
        }
        if state.github_interval > state.told_interval {
            state.told_interval = state.github_interval;
            slow_down = true;
        }
        if slow_down {
            Answer::SlowDown(state.told_interval)
        } else {
            Answer::Pending(state.told_interval)
        }
    }

    fn set_github_interval(&self, interval: Duration) {
        self.lock().github_interval = interval;
    }

    fn finish(&self, outcome: Outcome) {
        self.lock().outcome = outcome;
    }

    /// Whether the client has not polled for [`ABANDONED_AFTER`] beyond its interval.
    fn abandoned(&self, now: Instant) -> bool {
        let state = self.lock();
        now.saturating_duration_since(state.last_poll) > ABANDONED_AFTER + state.told_interval
    }
}

/// `POST /auth/device`: starts GitHub's device flow.
pub async fn start(relay: Arc<Relay>, headers: HeaderMap, meta: RequestMeta) -> Response {
    let config = relay.config();
    let auth = &config.auth;
    if !auth.enabled() {
        return not_enabled();
    }
    let client = match github::oauth_client(auth, None) {
        Ok(client) => client,
        Err(error) => return misconfigured(&error),
    };
    let mut request = client.exchange_device_code();
    if !auth.github_org.trim().is_empty() {
        request = request.add_scope(Scope::new("read:org".to_owned()));
    }
    let http = relay.sign_in().http.clone();
    let sender = move |request| github::send(http.clone(), request);
    let details: StandardDeviceAuthorizationResponse = match request.request_async(&sender).await {
        Ok(details) => details,
        Err(RequestTokenError::ServerResponse(error))
            if *error.error()
                == BasicErrorResponseType::Extension("device_flow_disabled".to_owned()) =>
        {
            let login_url = format!("{}/auth/github", relay.public_base(&headers, &meta));
            return disabled(&login_url);
        }
        Err(error) => {
            warn!(error = %describe(&error), "cannot start a device sign-in");
            return github_unavailable();
        }
    };

    let now = Instant::now();
    let login = Arc::new(DeviceLogin::new(details.interval(), now));
    let deadline = now + details.expires_in();
    let Ok(id) = relay.sign_in().devices.insert(login.clone(), deadline) else {
        warn!("too many device sign-ins in progress");
        return busy();
    };
    let span = tracing::info_span!("device_sign_in");
    let login_url = format!("{}/auth/github", relay.public_base(&headers, &meta));
    let watching = watch_github(relay.clone(), login, details.clone(), id.clone(), login_url);
    tokio::spawn(watching.instrument(span));
    let mut response = json_response(
        StatusCode::OK,
        &serde_json::json!({
            "id": id,
            "verification_uri": details.verification_uri().as_str(),
            "user_code": details.user_code().secret(),
            "interval": details.interval().as_secs(),
            "expires_in": details.expires_in().as_secs(),
        }),
    );
    no_store(&mut response);
    response
}

/// Polls GitHub until the user approves, refuses, the code expires or the
/// client goes away, and records the outcome.
async fn watch_github(
    relay: Arc<Relay>,
    login: Arc<DeviceLogin>,
    details: StandardDeviceAuthorizationResponse,
    id: String,
    login_url: String,
) {
    let outcome = tokio::select! {
        outcome = complete(&relay, &login, &details, login_url) => outcome,
        () = abandoned(&login) => {
            info!("device sign-in abandoned by its client");
            relay.sign_in().devices.remove(&id);
            Outcome::Expired
        }
    };
    login.finish(outcome);
}

async fn abandoned(login: &DeviceLogin) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if login.abandoned(Instant::now()) {
            return;
        }
    }
}

/// Runs the device flow to its end against GitHub.
async fn complete(
    relay: &Relay,
    login: &Arc<DeviceLogin>,
    details: &StandardDeviceAuthorizationResponse,
    login_url: String,
) -> Outcome {
    let config = relay.config();
    let auth = &config.auth;
    let client = match github::oauth_client(auth, None) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "sign-in is misconfigured");
            return Outcome::Failed;
        }
    };
    let http = relay.sign_in().http.clone();
    // GitHub wants the interval to pass before the first poll too.
    tokio::time::sleep(details.interval()).await;
    let sender = move |request| github::send(http.clone(), request);
    let watched = login.clone();
    let sleep = move |interval: Duration| {
        watched.set_github_interval(interval);
        tokio::time::sleep(interval)
    };
    let answer = client
        .exchange_device_access_token(details)
        .request_async(&sender, sleep, None)
        .await;
    let access = match answer {
        Ok(answer) => answer.access_token().clone(),
        Err(RequestTokenError::ServerResponse(error)) => {
            return match error.error() {
                DeviceCodeErrorResponseType::AccessDenied => {
                    info!("device sign-in denied on GitHub");
                    Outcome::Denied
                }
                DeviceCodeErrorResponseType::ExpiredToken => {
                    info!("device sign-in code expired");
                    Outcome::Expired
                }
                DeviceCodeErrorResponseType::Basic(BasicErrorResponseType::Extension(code))
                    if code == "device_flow_disabled" =>
                {
                    Outcome::Disabled(login_url)
                }
                other => {
                    warn!(github_error = %other, "GitHub ended the device sign-in");
                    Outcome::Failed
                }
            };
        }
        Err(error) => {
            warn!(error = %describe(&error), "device sign-in failed");
            return Outcome::Failed;
        }
    };
    let http = relay.sign_in().http.clone();
    match github::identify(&http, auth, &access).await {
        Ok(user) => {
            info!(login = %user, flow = "device", "signed in");
            let token = relay.tokens().issue_session(&user, auth.session_ttl);
            Outcome::Complete(Secret::new(token))
        }
        Err(SignInError::NotMember { login, org }) => {
            info!(%login, %org, "sign-in refused: not a member of the organisation");
            Outcome::NotMember(SignInError::NotMember { login, org }.to_string())
        }
        Err(error) => {
            warn!(error = %error, "cannot complete the device sign-in with GitHub");
            Outcome::Failed
        }
    }
}

/// `POST /auth/device/poll`: where the sign-in with this id stands.
pub fn poll(request: PollRequest, relay: Arc<Relay>) -> Response {
    if !relay.config().auth.enabled() {
        return not_enabled();
    }
    let devices = &relay.sign_in().devices;
    let Some(login) = devices.get(&request.id) else {
        return status_error(
            StatusCode::GONE,
            "expired",
            "this sign-in is unknown or expired: run `wow-client login` again",
        );
    };
    let outcome = match login.poll(Instant::now()) {
        Answer::Pending(interval) => return waiting("pending", interval),
        Answer::SlowDown(interval) => return waiting("slow_down", interval),
        Answer::Done(outcome) => outcome,
    };
    devices.remove(&request.id);
    match outcome {
        Outcome::Complete(token) => {
            let mut response = json_response(
                StatusCode::OK,
                &serde_json::json!({ "status": "complete", "token": token.expose() }),
            );
            no_store(&mut response);
            response
        }
        Outcome::Pending | Outcome::Expired => status_error(
            StatusCode::GONE,
            "expired",
            "the sign-in code expired before it was entered: run `wow-client login` again",
        ),
        Outcome::Denied => status_error(
            StatusCode::FORBIDDEN,
            "denied",
            "the sign-in was denied on GitHub: run `wow-client login` again and authorize the app",
        ),
        Outcome::NotMember(message) => status_error(StatusCode::FORBIDDEN, "forbidden", &message),
        Outcome::Disabled(login_url) => disabled(&login_url),
        Outcome::Failed => status_error(
            StatusCode::BAD_GATEWAY,
            "failed",
            "cannot complete the sign-in with GitHub: try again later",
        ),
    }
}

/// The answer when device flow is off in the OAuth App: where to sign in
/// in a browser instead.
fn disabled(login_url: &str) -> Response {
    warn!("device flow is disabled in the GitHub OAuth App: enable it in its settings");
    json_response(
        StatusCode::NOT_IMPLEMENTED,
        &serde_json::json!({
            "error": format!("device flow is disabled in this server's GitHub OAuth App: sign in at {login_url}, then run `wow-client login --token TOKEN` with the token it shows"),
            "status": "disabled",
            "code": "device_flow_disabled",
            "login_url": login_url,
        }),
    )
}

fn waiting(status: &str, interval: Duration) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": status, "interval": interval.as_secs() }),
    )
}

fn status_error(code: StatusCode, status: &str, message: &str) -> Response {
    json_response(
        code,
        &serde_json::json!({ "status": status, "error": message }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_paced_by_the_interval_and_github_slowing_down() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let login = DeviceLogin::new(5 * second, start);

        // On time: pending at the same interval.
        assert_eq!(login.poll(start + 5 * second), Answer::Pending(5 * second));
        // Too soon: slow down by 5 s.
        assert_eq!(
            login.poll(start + 6 * second),
            Answer::SlowDown(10 * second)
        );
        assert_eq!(
            login.poll(start + 16 * second),
            Answer::Pending(10 * second)
        );
        // GitHub slowed the server down beyond what the client was told.
        login.set_github_interval(15 * second);
        assert_eq!(
            login.poll(start + 26 * second),
            Answer::SlowDown(15 * second)
        );

        login.finish(Outcome::Complete(Secret::new("jwt")));
        // A finished sign-in answers at once, however soon.
        assert_eq!(
            login.poll(start + 27 * second),
            Answer::Done(Outcome::Complete(Secret::new("jwt")))
        );
    }

    #[test]
    fn a_client_that_stops_polling_abandons_the_sign_in() {
        let start = Instant::now();
        let login = DeviceLogin::new(Duration::from_secs(5), start);
        assert!(!login.abandoned(start + Duration::from_secs(60)));
        assert!(login.abandoned(start + ABANDONED_AFTER + Duration::from_secs(6)));
    }
}
