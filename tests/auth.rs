//! Auth mode against a fake GitHub: the browser flow by hand, the device
//! flow over HTTP, `/new` and `/ws` token checks, renewal keeping the URL,
//! and a webhook end to end.

mod auth_fake;
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_fake::*;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wow::Secret;
use wow::client::{ClientError, StateDir};
use wow::config::{Auth, ServerConfig};
use wow::server::auth::Tokens;

const JWT_SECRET: &str = "test-jwt-secret-0f9e8d7c6b5a4";

fn auth_config(fake: &FakeGitHub, config: &mut ServerConfig) {
    config.auth = Auth {
        github_client_id: CLIENT_ID.to_owned(),
        github_client_secret: Secret::new(CLIENT_SECRET),
        github_org: ORG.to_owned(),
        jwt_secret: Secret::new(JWT_SECRET),
        github_url: fake.url.clone(),
        github_api_url: fake.url.clone(),
        ..Auth::default()
    };
}

async fn auth_server(fake: &FakeGitHub) -> TestServer {
    start_server(|config| auth_config(fake, config)).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn location(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 302, "expected a redirect");
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// The browser flow followed by hand: our redirect, GitHub's consent page
/// redirecting back, then the callback (with `mangle` applied to its URL).
async fn browser_flow(
    server: &TestServer,
    fake: &FakeGitHub,
    accept: &str,
    mangle: impl FnOnce(String) -> String,
) -> reqwest::Response {
    let http = http();
    let start = http
        .get(format!("{}/auth/github", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(start.headers()["cache-control"], "no-store");
    let authorize = location(&start);
    let (endpoint, query) = authorize.split_once('?').unwrap();
    assert_eq!(endpoint, format!("{}/login/oauth/authorize", fake.url));
    let params = form(query.as_bytes());
    assert_eq!(
        params["redirect_uri"],
        format!("{}/auth/callback", server.url)
    );
    assert_eq!(params["scope"], "read:org");
    assert_eq!(params["code_challenge_method"], "S256");
    assert!(params["state"].len() >= 16);

    let consent = http.get(&authorize).send().await.unwrap();
    let callback = location(&consent);
    assert!(callback.starts_with(&format!("{}/auth/callback?", server.url)));
    http.get(mangle(callback))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
}

async fn session_token(server: &TestServer, fake: &FakeGitHub) -> String {
    let response = browser_flow(server, fake, "application/json", |url| url).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

fn sign(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// `GET /new` with an optional bearer token.
async fn new_channel(server: &TestServer, bearer: Option<&str>) -> (u16, Value) {
    let mut request = http().get(format!("{}/new", server.url));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Tries to attach; the HTTP status of a refusal with its body, or 101.
async fn attach(server: &TestServer, channel: &str, token: &str) -> (u16, String) {
    let url = format!("ws://{}/ws/{channel}", server.addr);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match within(STEP, tokio_tungstenite::connect_async(request)).await {
        Ok(_) => (101, String::new()),
        Err(WsError::Http(response)) => {
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body)
        }
        Err(error) => panic!("unexpected error: {error}"),
    }
}

#[tokio::test]
async fn the_browser_flow_signs_a_member_in_and_the_session_opens_new() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;

        let token = session_token(&server, &fake).await;
        let claims = Tokens::from_secret(JWT_SECRET.as_bytes())
            .unwrap()
            .verify_session(&token)
            .unwrap();
        assert_eq!(claims.sub, MEMBER);
        let ttl = Auth::default().session_ttl.as_secs();
        assert!(claims.exp.abs_diff(now() + ttl) < 60, "{claims:?}");

        let (status, body) = new_channel(&server, Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        let (channel, claims) = Tokens::from_secret(JWT_SECRET.as_bytes())
            .unwrap()
            .verify_channel(body["token"].as_str().unwrap())
            .unwrap();
        assert_eq!(channel.to_string(), body["channel_id"].as_str().unwrap());
        assert_eq!(claims.owner.as_deref(), Some(MEMBER));
        let ttl = Auth::default().channel_ttl.as_secs();
        assert!(claims.exp.unwrap().abs_diff(now() + ttl) < 60);
    })
    .await;
}

#[tokio::test]
async fn a_browser_gets_a_page_with_the_exact_login_command() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;
        let response = browser_flow(&server, &fake, "text/html,application/xhtml+xml", |u| u).await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(response.headers()["cache-control"], "no-store");
        let page = response.text().await.unwrap();
        let command = page
            .split("<pre>")
            .nth(1)
            .and_then(|rest| rest.split("</pre>").next())
            .unwrap();
        let prefix = format!("wow-client login --server-url {} --token ", server.url);
        let token = command.strip_prefix(&prefix).unwrap();
        assert!(
            Tokens::from_secret(JWT_SECRET.as_bytes())
                .unwrap()
                .verify_session(token)
                .is_ok(),
            "{page}"
        );
        assert!(page.contains(&format!("Signed in as {MEMBER}")), "{page}");
    })
    .await;
}

#[tokio::test]
async fn a_wrong_or_replayed_state_is_rejected() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;

        let response = browser_flow(&server, &fake, "application/json", |url| {
            url.replace("state=", "state=x")
        })
        .await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("state"), "{body}");

        // A state is good for one callback only.
        let mut first = None;
        let response = browser_flow(&server, &fake, "application/json", |url| {
            first = Some(url.clone());
            url
        })
        .await;
        assert_eq!(response.status(), 200);
        let replay = http().get(first.unwrap()).send().await.unwrap();
        assert_eq!(replay.status(), 400);
    })
    .await;
}

#[tokio::test]
async fn a_user_outside_the_organisation_gets_403() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        fake.with(|state| state.browser_user = OUTSIDER.to_owned());
        let server = auth_server(&fake).await;
        let response = browser_flow(&server, &fake, "application/json", |url| url).await;
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(OUTSIDER) && error.contains("not a member") && error.contains(ORG),
            "{error}"
        );
        assert!(body.get("token").is_none());
    })
    .await;
}

#[tokio::test]
async fn without_an_organisation_any_github_user_signs_in_without_read_org() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        fake.with(|state| state.browser_user = OUTSIDER.to_owned());
        let server = start_server(|config| {
            auth_config(&fake, config);
            config.auth.github_org = String::new();
        })
        .await;
        let http = http();
        let start = http
            .get(format!("{}/auth/github", server.url))
            .send()
            .await
            .unwrap();
        let authorize = location(&start);
        assert!(!authorize.contains("scope="), "{authorize}");
        let callback = location(&http.get(&authorize).send().await.unwrap());
        let response = http.get(callback).send().await.unwrap();
        assert_eq!(response.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn new_needs_a_live_session_token() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;

        let (status, body) = new_channel(&server, None).await;
        assert_eq!(status, 401);
        assert!(body["error"].as_str().unwrap().contains("wow-client login"));

        let expired =
            sign(json!({"sub": MEMBER, "kind": "session", "iat": 1, "exp": now() - 3600}));
        let (status, body) = new_channel(&server, Some(&expired)).await;
        assert_eq!(status, 401);
        assert!(
            body["error"].as_str().unwrap().contains("expired"),
            "{body}"
        );

        let forged = Tokens::from_secret(b"another key")
            .unwrap()
            .issue_session(MEMBER, Duration::from_secs(600));
        assert_eq!(new_channel(&server, Some(&forged)).await.0, 401);
        assert_eq!(new_channel(&server, Some("garbage")).await.0, 401);

        // A channel token is no session token.
        let session = session_token(&server, &fake).await;
        let (status, body) = new_channel(&server, Some(&session)).await;
        assert_eq!(status, 200);
        let channel_token = body["token"].as_str().unwrap();
        assert_eq!(new_channel(&server, Some(channel_token)).await.0, 401);
    })
    .await;
}

#[tokio::test]
async fn ws_takes_only_the_channels_own_token() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;
        let session = session_token(&server, &fake).await;
        let (_, mine) = new_channel(&server, Some(&session)).await;
        let (_, other) = new_channel(&server, Some(&session)).await;
        let id = mine["channel_id"].as_str().unwrap();
        let own = mine["token"].as_str().unwrap();

        let (status, body) = attach(&server, id, other["token"].as_str().unwrap()).await;
        assert_eq!(status, 403, "{body}");

        let expired = sign(json!({
            "sub": id, "kind": "channel", "iat": 1, "exp": now() - 3600, "owner": MEMBER,
        }));
        let (status, body) = attach(&server, id, &expired).await;
        assert_eq!(status, 401);
        assert!(body.contains("expired"), "{body}");

        let forged = Tokens::from_secret(b"another key").unwrap().issue_channel(
            id.parse().unwrap(),
            Some(MEMBER),
            None,
        );
        assert_eq!(attach(&server, id, &forged).await.0, 401);

        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = json!({"sub": id, "kind": "channel", "iat": 1}).to_string();
        let unsigned = format!(
            "{}.{}.",
            engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(claims)
        );
        assert_eq!(attach(&server, id, &unsigned).await.0, 401);

        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": id, "kind": "channel", "iat": 1}),
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(attach(&server, id, &hs512).await.0, 401);

        // A session token never attaches.
        assert_eq!(attach(&server, id, &session).await.0, 401);

        assert_eq!(attach(&server, id, own).await.0, 101);
    })
    .await;
}

#[tokio::test]
async fn a_webhook_crosses_end_to_end_in_auth_mode() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;
        let session = session_token(&server, &fake).await;
        let mut app = start_app(|_| Reply::new(201, "made")).await;
        let state = tempfile::tempdir().unwrap();
        let mut config = client_config(&server.url, &app.url, state.path());
        config.profiles[0].token = Secret::new(session);
        let mut client = start_client(config);
        let url = client.attached().await;

        let response = http()
            .post(format!("{url}/hooks?x=1"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.text().await.unwrap(), "made");
        let seen = app.request().await;
        assert_eq!(seen.target, "/hooks?x=1");
        assert_eq!(seen.body, b"payload");
        client.shutdown().await.unwrap();
    })
    .await;
}

/// A channel issued to `login`'s session, saved in `state` with an expired
/// token, as a client would hold it a year later.
async fn expired_channel(server: &TestServer, session: &str, state: &StateDir) -> (String, String) {
    let (_, issued) = new_channel(server, Some(session)).await;
    let id = issued["channel_id"].as_str().unwrap().to_owned();
    let url = issued["webhook_url"].as_str().unwrap().to_owned();
    let expired = sign(json!({
        "sub": id, "kind": "channel", "iat": now() - 7200, "exp": now() - 3600, "owner": MEMBER,
    }));
    state
        .save_channel(
            "default",
            &server.url,
            &wow::client::state::ChannelRecord {
                channel_id: id.parse().unwrap(),
                token: Secret::new(expired.clone()),
                webhook_url: url.clone(),
            },
        )
        .unwrap();
    (url, expired)
}

#[tokio::test]
async fn an_expired_channel_token_is_renewed_and_the_url_stays() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;
        let session = session_token(&server, &fake).await;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let (url, expired) = expired_channel(&server, &session, &state).await;
        // The session `wow-client login` stored is what renews.
        state
            .save_session(&server.url, &Secret::new(session))
            .unwrap();

        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let mut client = start_client(client_config(&server.url, &app.url, dir.path()));
        assert_eq!(client.attached().await, url);

        let renewed = state.load_channel("default", &server.url).unwrap().unwrap();
        assert_ne!(renewed.token.expose(), expired);
        assert_eq!(renewed.webhook_url, url);
        let (_, claims) = Tokens::from_secret(JWT_SECRET.as_bytes())
            .unwrap()
            .verify_channel(renewed.token.expose())
            .unwrap();
        assert!(claims.exp.unwrap() > now());

        let response = http()
            .post(&url)
            .body("after renewal")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(app.request().await.body, b"after renewal");
        client.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn without_a_live_session_an_expired_channel_says_to_log_in() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;
        let session = session_token(&server, &fake).await;
        let app = start_app(|_| Reply::new(200, "ok")).await;

        // No session at all.
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        expired_channel(&server, &session, &state).await;
        let client = start_client(client_config(&server.url, &app.url, dir.path()));
        let Err(ClientError::ChannelRefused(message)) = client.ended().await else {
            panic!("expected a refusal");
        };
        assert!(message.contains("expired"), "{message}");
        assert!(message.contains("wow-client login"), "{message}");
        assert!(!message.contains('\n'));

        // An expired session.
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        expired_channel(&server, &session, &state).await;
        let old = sign(json!({"sub": MEMBER, "kind": "session", "iat": 1, "exp": now() - 3600}));
        state.save_session(&server.url, &Secret::new(old)).unwrap();
        let client = start_client(client_config(&server.url, &app.url, dir.path()));
        let Err(ClientError::ChannelRefused(message)) = client.ended().await else {
            panic!("expected a refusal");
        };
        assert!(message.contains("session token has expired"), "{message}");
        assert!(
            message.contains(&format!("wow-client login --server-url {}", server.url)),
            "{message}"
        );
    })
    .await;
}

#[tokio::test]
async fn only_the_owner_renews_and_only_with_the_channels_own_token() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;
        let session = session_token(&server, &fake).await;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let (_, expired) = expired_channel(&server, &session, &state).await;
        let id = state
            .load_channel("default", &server.url)
            .unwrap()
            .unwrap()
            .channel_id;
        let renew = |bearer: Option<String>, token: String, channel: String| {
            let mut request = http()
                .post(format!("{}/channels/{channel}/token", server.url))
                .json(&json!({ "token": token }));
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };

        assert_eq!(renew(None, expired.clone(), id.to_string()).await, 401);
        let hubot = Tokens::from_secret(JWT_SECRET.as_bytes())
            .unwrap()
            .issue_session("hubot", Duration::from_secs(600));
        assert_eq!(
            renew(Some(hubot), expired.clone(), id.to_string()).await,
            403
        );
        let forged =
            Tokens::from_secret(b"another key")
                .unwrap()
                .issue_channel(id, Some(MEMBER), None);
        assert_eq!(
            renew(Some(session.clone()), forged, id.to_string()).await,
            401
        );
        let (_, other) = new_channel(&server, Some(&session)).await;
        let other = other["channel_id"].as_str().unwrap().to_owned();
        assert_eq!(
            renew(Some(session.clone()), expired.clone(), other).await,
            403
        );
        assert_eq!(renew(Some(session), expired, id.to_string()).await, 200);
    })
    .await;
}

/// `POST /auth/device`, then polls at the interval until the sign-in ends;
/// returns the final status and body, and every status seen before it.
async fn device_sign_in(server: &TestServer) -> (u16, Value, Vec<String>) {
    let http = http();
    let response = http
        .post(format!("{}/auth/device", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started: Value = response.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    let mut interval = started["interval"].as_u64().unwrap();
    let mut seen = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let response = http
            .post(format!("{}/auth/device/poll", server.url))
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        match body["status"].as_str() {
            Some(waiting @ ("pending" | "slow_down")) if status == 200 => {
                seen.push(waiting.to_owned());
                interval = body["interval"].as_u64().unwrap();
            }
            _ => return (status, body, seen),
        }
    }
}

#[tokio::test]
async fn the_device_flow_hands_out_an_id_never_githubs_device_code() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        fake.with(|state| state.device_script.push_back("authorization_pending"));
        let server = auth_server(&fake).await;
        let response = http()
            .post(format!("{}/auth/device", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let started: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(started["user_code"], "WDJB-MJHT");
        assert_eq!(
            started["verification_uri"],
            format!("{}/login/device", fake.url)
        );
        assert_eq!(started["interval"], 1);
        assert_eq!(started["expires_in"], 900);
        for secret in fake.issued() {
            assert!(!text.contains(&secret), "device code leaked: {text}");
        }

        let (status, body, seen) = device_sign_in(&server).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "complete");
        assert!(seen.contains(&"pending".to_owned()), "{seen:?}");
        let token = body["token"].as_str().unwrap();
        assert_eq!(new_channel(&server, Some(token)).await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn device_sign_ins_end_denied_expired_or_refused() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;

        fake.with(|state| state.device_script.push_back("access_denied"));
        let (status, body, _) = device_sign_in(&server).await;
        assert_eq!((status, body["status"].as_str()), (403, Some("denied")));

        fake.with(|state| state.device_script.push_back("expired_token"));
        let (status, body, _) = device_sign_in(&server).await;
        assert_eq!((status, body["status"].as_str()), (410, Some("expired")));

        // GitHub may say device flow is off only when polled.
        fake.with(|state| state.device_script.push_back("device_flow_disabled"));
        let (status, body, _) = device_sign_in(&server).await;
        assert_eq!((status, body["status"].as_str()), (501, Some("disabled")));
        assert_eq!(body["login_url"], format!("{}/auth/github", server.url));

        fake.with(|state| state.device_user = OUTSIDER.to_owned());
        let (status, body, _) = device_sign_in(&server).await;
        assert_eq!((status, body["status"].as_str()), (403, Some("forbidden")));
        assert!(body["error"].as_str().unwrap().contains("not a member"));

        let unknown = http()
            .post(format!("{}/auth/device/poll", server.url))
            .json(&json!({"id": "no-such-sign-in"}))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 410);
    })
    .await;
}

#[tokio::test]
async fn a_client_polling_too_fast_is_told_to_slow_down() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        fake.with(|state| {
            state.device_script.extend(["authorization_pending"; 20]);
        });
        let server = auth_server(&fake).await;
        let http = http();
        let started: Value = http
            .post(format!("{}/auth/device", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let poll = || {
            http.post(format!("{}/auth/device/poll", server.url))
                .json(&json!({ "id": started["id"] }))
                .send()
        };
        let body: Value = poll().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "slow_down");
        assert_eq!(body["interval"], 6);
        let body: Value = poll().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "slow_down");
        assert_eq!(body["interval"], 11);
    })
    .await;
}

#[tokio::test]
async fn with_device_flow_off_the_server_points_at_the_browser_flow() {
    within(STEP, async {
        let fake = FakeGitHub::start().await;
        fake.with(|state| state.device_flow_enabled = false);
        let server = auth_server(&fake).await;
        let response = http()
            .post(format!("{}/auth/device", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 501);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "device_flow_disabled");
        assert_eq!(body["login_url"], format!("{}/auth/github", server.url));
        assert!(body["error"].as_str().unwrap().contains("--token"));
    })
    .await;
}

#[tokio::test]
async fn a_server_without_auth_mode_has_no_sign_in_and_ignores_tokens() {
    within(STEP, async {
        let server = start_server(|_| {}).await;
        let http = http();
        for (method, path) in [("GET", "/auth/github"), ("POST", "/auth/device")] {
            let response = http
                .request(method.parse().unwrap(), format!("{}{path}", server.url))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{path}");
        }
        assert_eq!(new_channel(&server, Some("anything")).await.0, 200);
    })
    .await;
}
