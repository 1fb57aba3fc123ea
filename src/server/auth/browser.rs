//! Browser sign-in: `GET /auth/github` sends the user to GitHub's consent
//! page; `GET /auth/callback` turns GitHub's answer into a session token.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use oauth2::{
    AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, TokenResponse,
};
use tracing::{info, warn};
use warp::reply::Response;

use super::github::{self, SignInError};
use super::{BROWSER_TTL, busy, not_enabled};
use crate::server::Relay;
use crate::server::http::{RequestMeta, error_response, json_response};

/// What the server keeps of a browser sign-in between the redirect and the
/// callback, under its `state`.
pub struct BrowserLogin {
    verifier: PkceCodeVerifier,
    redirect: String,
}

impl std::fmt::Debug for BrowserLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLogin")
            .field("redirect", &self.redirect)
            .finish_non_exhaustive()
    }
}

/// `GET /auth/github`: redirects to GitHub's consent page.
pub fn begin(relay: Arc<Relay>, headers: HeaderMap, meta: RequestMeta) -> Response {
    let config = relay.config();
    let auth = &config.auth;
    if !auth.enabled() {
        return not_enabled();
    }
    let redirect = format!("{}/auth/callback", relay.public_base(&headers, &meta));
    let client = match github::oauth_client(auth, Some(&redirect)) {
        Ok(client) => client,
        Err(error) => return misconfigured(&error),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge);
    if !auth.github_org.trim().is_empty() {
        request = request.add_scope(Scope::new("read:org".to_owned()));
    }
    let (url, state) = request.url();
    let pending = BrowserLogin { verifier, redirect };
    let deadline = Instant::now() + BROWSER_TTL;
    if relay
        .sign_in()
        .browser
        .insert_at(state.into_secret(), pending, deadline)
        .is_err()
    {
        warn!("too many browser sign-ins in progress");
        return busy();
    }
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return misconfigured(&anyhow::anyhow!("the authorize URL is not a header value"));
    };
    let response = warp::reply::with_status(warp::reply(), StatusCode::FOUND);
    let mut response = warp::Reply::into_response(response);
    response.headers_mut().insert(header::LOCATION, location);
    no_store(&mut response);
    response
}

/// `GET /auth/callback?code=…&state=…`: checks the state, exchanges the
/// code, checks the organisation and answers the session token.
pub async fn callback(
    query: HashMap<String, String>,
    relay: Arc<Relay>,
    headers: HeaderMap,
    meta: RequestMeta,
) -> Response {
    let config = relay.config();
    let auth = &config.auth;
    if !auth.enabled() {
        return not_enabled();
    }
    let pending = query
        .get("state")
        .and_then(|state| relay.sign_in().browser.take(state));
    let Some(pending) = pending else {
        warn!("sign-in callback with an unknown or expired state");
        return error_response(
            StatusCode::BAD_REQUEST,
            "unknown or expired sign-in state: start again at /auth/github",
        );
    };
    if let Some(error) = query.get("error") {
        info!(github_error = %error, "sign-in cancelled on GitHub");
        return error_response(
            StatusCode::FORBIDDEN,
            "sign-in was cancelled on GitHub: start again at /auth/github",
        );
    }
    let Some(code) = query.get("code") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "GitHub sent no code: start again at /auth/github",
        );
    };

    let access = match exchange(&relay, auth, code, pending).await {
        Ok(access) => access,
        Err(response) => return response,
    };
    let http = relay.sign_in().http.clone();
    let login = match github::identify(&http, auth, &access).await {
        Ok(login) => login,
        Err(error) => return refused(&error),
    };
    let token = relay.tokens().issue_session(&login, auth.session_ttl);
    info!(%login, flow = "browser", "signed in");
    if wants_html(&headers) {
        let base = relay.public_base(&headers, &meta);
        let expires = SystemTime::now() + auth.session_ttl;
        return html_page(&login, &token, &base, expires);
    }
    let mut response = json_response(StatusCode::OK, &serde_json::json!({ "token": token }));
    no_store(&mut response);
    response
}

/// Exchanges GitHub's code for an access token, with the PKCE verifier and
/// the redirect URI of the sign-in it belongs to.
async fn exchange(
    relay: &Relay,
    auth: &crate::config::Auth,
    code: &str,
    pending: BrowserLogin,
) -> Result<oauth2::AccessToken, Response> {
    let client = github::oauth_client(auth, None).map_err(|error| misconfigured(&error))?;
    let redirect = RedirectUrl::new(pending.redirect)
        .map_err(|error| misconfigured(&anyhow::Error::from(error)))?;
    let http = relay.sign_in().http.clone();
    let sender = move |request| github::send(http.clone(), request);
    let answer = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(pending.verifier)
        .set_redirect_uri(Cow::Owned(redirect))
        .request_async(&sender)
        .await;
    match answer {
        Ok(answer) => Ok(answer.access_token().clone()),
        Err(RequestTokenError::ServerResponse(error)) => {
            warn!(github_error = %error.error(), "GitHub refused the sign-in code");
            Err(error_response(
                StatusCode::BAD_REQUEST,
                "GitHub refused the sign-in code (expired or used): start again at /auth/github",
            ))
        }
        Err(error) => {
            warn!(error = %describe(&error), "cannot exchange the sign-in code");
            Err(github_unavailable())
        }
    }
}

/// An `oauth2` error in words that hold no body, code or token.
pub(super) fn describe<RE: std::error::Error + 'static, TE: oauth2::ErrorResponse + 'static>(
    error: &RequestTokenError<RE, TE>,
) -> String {
    match error {
        RequestTokenError::ServerResponse(error) => format!("GitHub answered an error: {error}"),
        RequestTokenError::Request(error) => error.to_string(),
        RequestTokenError::Parse(error, _) => {
            format!("unreadable answer from GitHub at {}", error.path())
        }
        RequestTokenError::Other(error) => error.clone(),
    }
}

/// The answer to a sign-in GitHub vouched for but we do not accept.
pub(super) fn refused(error: &SignInError) -> Response {
    match error {
        SignInError::NotMember { login, org } => {
            info!(%login, %org, "sign-in refused: not a member of the organisation");
            error_response(StatusCode::FORBIDDEN, &error.to_string())
        }
        SignInError::GitHub(detail) => {
            warn!(error = %detail, "cannot complete the sign-in with GitHub");
            github_unavailable()
        }
    }
}

pub(super) fn github_unavailable() -> Response {
    error_response(
        StatusCode::BAD_GATEWAY,
        "cannot complete the sign-in with GitHub: try again later",
    )
}

pub(super) fn misconfigured(error: &anyhow::Error) -> Response {
    tracing::error!(error = format!("{error:#}"), "sign-in is misconfigured");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "sign-in is misconfigured on this server",
    )
}

/// Keeps tokens out of caches and out of the `Referer` of later requests.
pub(super) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/html"))
}

/// The page a browser sees after signing in: the token and the command
/// that stores it.
fn html_page(login: &str, token: &str, base: &str, expires: SystemTime) -> Response {
    let command = format!("wow-client login --server-url {base} --token {token}");
    let until = humantime::format_rfc3339_seconds(expires).to_string();
    let mut page = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>wow: signed in</title></head>\n<body>\n",
    );
    let _ = write!(
        page,
        "<h1>Signed in as {}</h1>\n\
         <p>Run this where <code>wow-client</code> runs to store your session:</p>\n\
         <pre>{}</pre>\n\
         <p>The session is valid until {}. Keep the token private: it lets anyone \
         create webhook URLs on this server as you.</p>\n</body></html>\n",
        escape(login),
        escape(&command),
        escape(&until),
    );
    let mut response = warp::Reply::into_response(warp::reply::html(page));
    no_store(&mut response);
    response
}

/// `text` with HTML's special characters escaped.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_token_page_is_never_cached() {
        let response = html_page(
            "octo<cat>",
            "a.b.c",
            "https://hooks.example.com",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        );
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            HeaderValue::from_static("no-store")
        );
    }
}
