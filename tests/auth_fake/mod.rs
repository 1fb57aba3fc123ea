//! A fake GitHub on 127.0.0.1:0 that speaks GitHub's real wire formats:
//! the authorize redirect, `POST /login/oauth/access_token` (JSON, errors
//! with `200 OK` as GitHub sends them), the device-code endpoint, `GET /user`
//! and organisation membership.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::common::Background;

pub const CLIENT_ID: &str = "Iv1.fakeclientid0001";
pub const CLIENT_SECRET: &str = "fake-client-secret-5f2b9c0e1d";
pub const ORG: &str = "acme";
pub const MEMBER: &str = "octocat";
pub const OUTSIDER: &str = "mallory";

/// What the fake GitHub knows and has handed out.
pub struct FakeState {
    /// Who is signed in at the consent page.
    pub browser_user: String,
    /// Who approves device codes.
    pub device_user: String,
    /// Answers to the next device-token polls, in order ("ok" grants);
    /// empty: grant.
    pub device_script: VecDeque<&'static str>,
    /// Whether the OAuth App has device flow switched on.
    pub device_flow_enabled: bool,
    /// Active members of [`ORG`].
    pub members: Vec<String>,
    /// Every code, device code and access token handed out.
    pub issued: Vec<String>,
    /// When each device-token poll arrived, with the answer given.
    pub device_polls: Vec<(Instant, &'static str)>,
    /// The scope each authorize request asked for.
    pub scopes: Vec<String>,
    codes: HashMap<String, Grant>,
    devices: HashMap<String, ()>,
    tokens: HashMap<String, String>,
}

struct Grant {
    user: String,
    challenge: String,
    redirect_uri: String,
}

/// A running fake GitHub.
pub struct FakeGitHub {
    pub addr: SocketAddr,
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
    _task: Background<()>,
}

impl FakeGitHub {
    pub async fn start() -> FakeGitHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let state = Arc::new(Mutex::new(FakeState {
            browser_user: MEMBER.to_owned(),
            device_user: MEMBER.to_owned(),
            device_script: VecDeque::new(),
            device_flow_enabled: true,
            members: vec![MEMBER.to_owned()],
            issued: Vec::new(),
            device_polls: Vec::new(),
            scopes: Vec::new(),
            codes: HashMap::new(),
            devices: HashMap::new(),
            tokens: HashMap::new(),
        }));
        let shared = state.clone();
        let base = url.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let base = base.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        let base = base.clone();
                        async move { Ok::<_, Infallible>(handle(request, &state, &base).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeGitHub {
            addr,
            url,
            state,
            _task: Background(Some(task)),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Every secret the fake handed out so far.
    pub fn issued(&self) -> Vec<String> {
        self.with(|state| state.issued.clone())
    }
}

type Response = hyper::Response<Full<Bytes>>;

async fn handle(
    request: hyper::Request<Incoming>,
    state: &Mutex<FakeState>,
    base: &str,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query = parts.uri.query().unwrap_or("");
    let path = parts.uri.path().to_owned();
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, token)| token.to_owned()))
        .unwrap_or_default();
    let mut state = state.lock().unwrap();
    match (parts.method.as_str(), path.as_str()) {
        ("GET", "/login/oauth/authorize") => authorize(&mut state, &form(query.as_bytes())),
        ("POST", "/login/oauth/access_token") => {
            let params = form(&body);
            if params.get("grant_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:grant-type:device_code")
            {
                device_token(&mut state, &params)
            } else {
                code_token(&mut state, &params)
            }
        }
        ("POST", "/login/device/code") => device_code(&mut state, &form(&body), base),
        ("GET", "/user") => match state.tokens.get(&bearer) {
            Some(login) => answer(200, json!({"login": login, "id": 583231, "type": "User"})),
            None => answer(
                401,
                json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
            ),
        },
        ("GET", path) => membership(&state, path, &bearer),
        _ => answer(404, json!({"message": "Not Found"})),
    }
}

fn authorize(state: &mut FakeState, params: &HashMap<String, String>) -> Response {
    assert_eq!(params.get("client_id").map(String::as_str), Some(CLIENT_ID));
    assert_eq!(
        params.get("response_type").map(String::as_str),
        Some("code")
    );
    assert_eq!(
        params.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    let redirect_uri = params["redirect_uri"].clone();
    let code = format!("ghcode{}", uuid::Uuid::new_v4().simple());
    state.issued.push(code.clone());
    state
        .scopes
        .push(params.get("scope").cloned().unwrap_or_default());
    state.codes.insert(
        code.clone(),
        Grant {
            user: state.browser_user.clone(),
            challenge: params["code_challenge"].clone(),
            redirect_uri: redirect_uri.clone(),
        },
    );
    let location = format!(
        "{redirect_uri}?code={code}&state={}",
        encode(&params["state"])
    );
    hyper::Response::builder()
        .status(302)
        .header("location", location)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn code_token(state: &mut FakeState, params: &HashMap<String, String>) -> Response {
    let credentials = params.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && params.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    if !credentials {
        return oauth_error(
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
        );
    }
    let grant = params.get("code").and_then(|code| state.codes.remove(code));
    let Some(grant) = grant else {
        return oauth_error(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        );
    };
    let verifier = params.get("code_verifier").cloned().unwrap_or_default();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    if challenge != grant.challenge || params.get("redirect_uri") != Some(&grant.redirect_uri) {
        return oauth_error(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        );
    }
    grant_token(state, &grant.user)
}

fn grant_token(state: &mut FakeState, user: &str) -> Response {
    let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
    state.issued.push(token.clone());
    state.tokens.insert(token.clone(), user.to_owned());
    answer(
        200,
        json!({"access_token": token, "token_type": "bearer", "scope": "read:org"}),
    )
}

fn device_code(state: &mut FakeState, params: &HashMap<String, String>, base: &str) -> Response {
    assert_eq!(params.get("client_id").map(String::as_str), Some(CLIENT_ID));
    if !state.device_flow_enabled {
        return oauth_error(
            "device_flow_disabled",
            "Device Flow must be explicitly enabled for this App",
        );
    }
    let device_code = format!("devcode{}", uuid::Uuid::new_v4().simple());
    state.issued.push(device_code.clone());
    state.devices.insert(device_code.clone(), ());
    answer(
        200,
        json!({
            "device_code": device_code,
            "user_code": "WDJB-MJHT",
            "verification_uri": format!("{base}/login/device"),
            "expires_in": 900,
            "interval": 1,
        }),
    )
}

fn device_token(state: &mut FakeState, params: &HashMap<String, String>) -> Response {
    assert_eq!(params.get("client_id").map(String::as_str), Some(CLIENT_ID));
    let known = params
        .get("device_code")
        .is_some_and(|code| state.devices.contains_key(code));
    if !known {
        return oauth_error(
            "incorrect_device_code",
            "The device_code provided is not valid.",
        );
    }
    let next = state.device_script.pop_front().unwrap_or("ok");
    state.device_polls.push((Instant::now(), next));
    match next {
        "ok" => {
            if let Some(code) = params.get("device_code") {
                state.devices.remove(code);
            }
            let user = state.device_user.clone();
            grant_token(state, &user)
        }
        "slow_down" => answer(
            200,
            json!({"error": "slow_down", "error_description": "Too many requests have been made in the same timeframe.", "interval": 6}),
        ),
        error => oauth_error(error, "see GitHub's documentation"),
    }
}

fn membership(state: &FakeState, path: &str, bearer: &str) -> Response {
    let Some(login) = state.tokens.get(bearer) else {
        return answer(401, json!({"message": "Bad credentials"}));
    };
    let member = state.members.contains(login);
    if let Some(org) = path.strip_prefix("/user/memberships/orgs/") {
        return if org == ORG && member {
            answer(
                200,
                json!({"state": "active", "role": "member", "organization": {"login": ORG}, "user": {"login": login}}),
            )
        } else {
            answer(404, json!({"message": "Not Found"}))
        };
    }
    if let Some(rest) = path.strip_prefix(&format!("/orgs/{ORG}/members/")) {
        let status = if state.members.iter().any(|m| m == rest) {
            204
        } else {
            404
        };
        return hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    answer(404, json!({"message": "Not Found"}))
}

/// GitHub answers OAuth errors with 200 and an `error` field.
fn oauth_error(error: &str, description: &str) -> Response {
    answer(
        200,
        json!({"error": error, "error_description": description, "error_uri": "https://docs.github.com/apps"}),
    )
}

fn answer(status: u16, body: serde_json::Value) -> Response {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub fn form(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Signs in through `server_url`'s browser flow, following each redirect
/// by hand, and returns the session token.
pub async fn sign_in_in_browser(server_url: &str) -> String {
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = format!("{server_url}/auth/github");
    for _ in 0..2 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 302, "{url}");
        url = response.headers()["location"].to_str().unwrap().to_owned();
    }
    let body: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    body["token"].as_str().expect("a session token").to_owned()
}
