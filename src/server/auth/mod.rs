//! Authentication: channel and session tokens, GitHub sign-in in the
//! browser and by device code, and the guard of internal endpoints.
//!
//! Auth mode is on when `auth.github_client_id` is set. Then `/new` wants a
//! session token, which a user gets by signing in with GitHub:
//!
//! - in a browser: `GET /auth/github` redirects to GitHub's consent page
//!   with a random `state` and a PKCE challenge, both kept here
//!   ([`SignIn`]), never in a cookie; `GET /auth/callback` checks the state,
//!   exchanges the code, checks the organisation and answers the token;
//! - with `wow-client login`: `POST /auth/device` starts GitHub's device
//!   flow and answers an opaque id (GitHub's device code stays here); the
//!   server polls GitHub itself while the client polls
//!   `POST /auth/device/poll` with the id.
//!
//! Sign-ins in progress live in memory only: a restart asks the user to
//! start again, which costs one click.

mod browser;
mod device;
pub mod github;
mod store;
mod tokens;

use std::time::Duration;

pub use self::browser::{begin, callback};
pub use self::device::{PollRequest, poll, start};
pub use self::store::{Expiring, Full};
pub use self::tokens::{
    CLOCK_SKEW, ChannelClaims, SessionClaims, TokenError, TokenKind, Tokens, bearer, unix_now,
};

use http::StatusCode;
use warp::reply::Response;

use self::browser::BrowserLogin;
use self::device::DeviceLogin;
use super::http::error_response;

/// Sign-ins of each kind in progress at most; more get 503.
const MAX_PENDING: usize = 1024;

/// A browser sign-in must come back from GitHub within this.
const BROWSER_TTL: Duration = Duration::from_secs(10 * 60);

/// Sign-ins in progress and the HTTP client that talks to GitHub.
#[derive(Debug)]
pub struct SignIn {
    http: reqwest::Client,
    browser: Expiring<BrowserLogin>,
    devices: Expiring<std::sync::Arc<DeviceLogin>>,
}

impl SignIn {
    /// No sign-in in progress yet.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built.
    pub fn new() -> anyhow::Result<Self> {
        Ok(SignIn {
            http: github::http_client()?,
            browser: Expiring::new(MAX_PENDING),
            devices: Expiring::new(MAX_PENDING),
        })
    }
}

/// The answer of a sign-in route on a server without auth mode.
fn not_enabled() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "this server does not use sign-in: wow-client needs no login for it",
    )
}

/// The answer when too many sign-ins are in progress.
fn busy() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many sign-ins in progress: try again in a minute",
    )
}
