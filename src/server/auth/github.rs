//! Talking to GitHub: the OAuth client (over our reqwest), the user behind
//! an access token, and the organisation check.
//!
//! GitHub answers OAuth errors with `200 OK` and an `error` field, where
//! RFC 6749 asks for 400; [`send`] turns such answers into 400 so that the
//! `oauth2` crate reads them as the errors they are.

use std::time::Duration;

use http::StatusCode;
use http::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use oauth2::basic::BasicClient;
use oauth2::{
    AccessToken, AuthType, AuthUrl, ClientId, ClientSecret, DeviceAuthorizationUrl, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, RedirectUrl, TokenUrl,
};
use serde::Deserialize;
use tracing::debug;

use crate::Secret;
use crate::config::Auth;

/// The OAuth client for GitHub with every endpoint we use set.
pub type OauthClient =
    BasicClient<EndpointSet, EndpointSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Any single request to GitHub gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The user agent GitHub's API requires.
const AGENT: &str = concat!("wow-server/", env!("CARGO_PKG_VERSION"));

/// Why a sign-in did not produce a user we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The user is not an active member of the required organisation.
    #[error(
        "{login} is not a member of the GitHub organisation {org}: ask an owner of {org} to invite you, then sign in again"
    )]
    NotMember {
        /// The GitHub login.
        login: String,
        /// The required organisation.
        org: String,
    },
    /// GitHub could not be reached or answered something unexpected; the
    /// text is for the operator's log only.
    #[error("{0}")]
    GitHub(String),
}

/// A transport failure of a request to GitHub. Its text never holds a
/// request body, so no code, secret or token.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach GitHub: {0}")]
pub struct Unreachable(String);

/// The HTTP client for GitHub: no redirects followed (an OAuth endpoint
/// that redirects is misconfigured, and following could leak credentials).
///
/// # Errors
///
/// When the TLS stack cannot be set up.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(AGENT)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// The OAuth client for `auth`, returning to `redirect` when given.
///
/// # Errors
///
/// When `github_url` does not make valid endpoint URLs.
pub fn oauth_client(auth: &Auth, redirect: Option<&str>) -> anyhow::Result<OauthClient> {
    let web = auth.github_url.trim_end_matches('/');
    let mut client = BasicClient::new(ClientId::new(auth.github_client_id.clone()))
        .set_client_secret(ClientSecret::new(
            auth.github_client_secret.expose().to_owned(),
        ))
        .set_auth_type(AuthType::RequestBody)
        .set_auth_uri(AuthUrl::new(format!("{web}/login/oauth/authorize"))?)
        .set_token_uri(TokenUrl::new(format!("{web}/login/oauth/access_token"))?)
        .set_device_authorization_url(DeviceAuthorizationUrl::new(format!(
            "{web}/login/device/code"
        ))?);
    if let Some(redirect) = redirect {
        client = client.set_redirect_uri(RedirectUrl::new(redirect.to_owned())?);
    }
    Ok(client)
}

/// Sends one of the `oauth2` crate's requests with our reqwest.
///
/// # Errors
///
/// [`Unreachable`] when no answer arrives.
pub async fn send(
    http: reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, Unreachable> {
    let (parts, body) = request.into_parts();
    let url = parts.uri.to_string();
    let response = http
        .request(parts.method, url.as_str())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|error| Unreachable(error.without_url().to_string()))?;
    let mut status = response.status();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|error| Unreachable(error.without_url().to_string()))?;
    if status == StatusCode::OK && oauth_error_code(&body).is_some() {
        status = StatusCode::BAD_REQUEST;
    }
    debug!(%url, %status, "github answered");
    let mut answer = http::Response::new(body.to_vec());
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(answer)
}

/// The `error` code of an OAuth error body, if it is one.
fn oauth_error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|body| body.error)
}

/// The GitHub login behind `token`, once it passed the organisation check
/// when `auth.github_org` is set.
///
/// # Errors
///
/// [`SignInError::NotMember`], or [`SignInError::GitHub`] when GitHub
/// cannot tell.
pub async fn identify(
    http: &reqwest::Client,
    auth: &Auth,
    token: &AccessToken,
) -> Result<String, SignInError> {
    #[derive(Deserialize)]
    struct User {
        login: String,
    }
    let token = Secret::new(token.secret().clone());
    let api = auth.github_api_url.trim_end_matches('/');
    let response = api_get(http, &format!("{api}/user"), &token).await?;
    if response.status() != StatusCode::OK {
        return Err(SignInError::GitHub(format!(
            "GET /user answered {}",
            response.status()
        )));
    }
    let user: User = response
        .json()
        .await
        .map_err(|error| SignInError::GitHub(format!("unreadable /user answer: {error}")))?;
    let org = auth.github_org.trim();
    if org.is_empty() || is_member(http, api, org, &user.login, &token).await? {
        return Ok(user.login);
    }
    Err(SignInError::NotMember {
        login: user.login,
        org: org.to_owned(),
    })
}

/// Whether `login` is an active member of `org`: first the user's own
/// membership (needs `read:org`), then the organisation's member list
/// (finds public members even where the organisation restricts OAuth apps).
async fn is_member(
    http: &reqwest::Client,
    api: &str,
    org: &str,
    login: &str,
    token: &Secret,
) -> Result<bool, SignInError> {
    #[derive(Deserialize)]
    struct Membership {
        state: String,
    }
    let url = format!("{api}/user/memberships/orgs/{org}");
    let response = api_get(http, &url, token).await?;
    match response.status() {
        StatusCode::OK => {
            let membership: Membership = response.json().await.map_err(|error| {
                SignInError::GitHub(format!("unreadable membership answer: {error}"))
            })?;
            if membership.state == "active" {
                return Ok(true);
            }
            debug!(%login, %org, state = %membership.state, "membership not active");
            return Ok(false);
        }
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => {}
        status => {
            return Err(SignInError::GitHub(format!(
                "GET /user/memberships/orgs/{org} answered {status}"
            )));
        }
    }
    let url = format!("{api}/orgs/{org}/members/{login}");
    let response = api_get(http, &url, token).await?;
    match response.status() {
        StatusCode::NO_CONTENT => Ok(true),
        StatusCode::NOT_FOUND | StatusCode::FOUND | StatusCode::FORBIDDEN => Ok(false),
        status => Err(SignInError::GitHub(format!(
            "GET /orgs/{org}/members/{login} answered {status}"
        ))),
    }
}

async fn api_get(
    http: &reqwest::Client,
    url: &str,
    token: &Secret,
) -> Result<reqwest::Response, SignInError> {
    http.get(url)
        .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
        .header(ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .header(USER_AGENT, AGENT)
        .send()
        .await
        .map_err(|error| {
            SignInError::GitHub(format!(
                "cannot reach the GitHub API: {}",
                error.without_url()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_errors_are_recognised_in_200_answers() {
        assert_eq!(
            oauth_error_code(br#"{"error":"authorization_pending","error_description":"x"}"#),
            Some("authorization_pending".to_owned())
        );
        assert_eq!(
            oauth_error_code(br#"{"access_token":"t","token_type":"bearer","scope":""}"#),
            None
        );
        assert_eq!(oauth_error_code(b"not json"), None);
    }

    #[test]
    fn the_client_points_at_the_configured_github() {
        let auth = Auth {
            github_client_id: "id".into(),
            github_url: "http://127.0.0.1:9/".into(),
            ..Auth::default()
        };
        let client = oauth_client(&auth, Some("http://127.0.0.1:8/auth/callback")).unwrap();
        assert_eq!(
            client.token_uri().as_str(),
            "http://127.0.0.1:9/login/oauth/access_token"
        );
        assert_eq!(
            client.device_authorization_url().as_str(),
            "http://127.0.0.1:9/login/device/code"
        );
    }
}
