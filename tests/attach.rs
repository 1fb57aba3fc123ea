//! `GET /ws/{id}`: who may attach to a channel, and what everyone else gets.

mod common;

use common::*;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Issued {
    channel_id: String,
    token: String,
}

async fn issue(server: &TestServer) -> Issued {
    let body: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/new", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Issued {
        channel_id: body["channel_id"].as_str().unwrap().to_owned(),
        token: body["token"].as_str().unwrap().to_owned(),
    }
}

/// Tries to attach; returns the HTTP status of a refusal, or 101.
async fn attach(
    server: &TestServer,
    channel: &str,
    token: Option<&str>,
    protocol: Option<&str>,
) -> (u16, String) {
    let url = format!("ws://{}/ws/{channel}", server.addr);
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    match within(STEP, tokio_tungstenite::connect_async(request)).await {
        Ok((socket, response)) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            drop(socket);
            (101, protocol)
        }
        Err(WsError::Http(response)) => {
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body)
        }
        Err(error) => panic!("unexpected error: {error}"),
    }
}

#[tokio::test]
async fn only_the_channel_token_attaches_and_everyone_else_gets_a_clear_status() {
    within(STEP, async {
        let server = start_server(|_| {}).await;
        let mine = issue(&server).await;
        let other = issue(&server).await;

        let (status, body) = attach(&server, &mine.channel_id, None, None).await;
        assert_eq!(status, 401);
        assert!(body.contains("missing or invalid channel token"), "{body}");
        assert_eq!(
            attach(&server, &mine.channel_id, Some("garbage"), None)
                .await
                .0,
            401
        );
        assert_eq!(
            attach(&server, &mine.channel_id, Some(&other.token), None)
                .await
                .0,
            403
        );
        let unknown = "7d1e0c2a-0000-4000-8000-000000000000";
        assert_eq!(
            attach(&server, unknown, Some(&mine.token), None).await.0,
            404
        );
        assert_eq!(attach(&server, unknown, None, None).await.0, 404);
        let (status, body) =
            attach(&server, &mine.channel_id, Some(&mine.token), Some("wow.v9")).await;
        assert_eq!(status, 400);
        assert!(body.contains("unsupported protocol version"), "{body}");

        // No protocol header means version 1; the server then names none.
        let (status, protocol) = attach(&server, &mine.channel_id, Some(&mine.token), None).await;
        assert_eq!((status, protocol.as_str()), (101, ""));
    })
    .await;
}

#[tokio::test]
async fn a_held_channel_refuses_a_second_client_with_409() {
    within(STEP, async {
        let app = start_app(|_| Reply::new(200, "ok")).await;
        let tunnel = tunnel(&app.url).await;
        let saved = wow::client::StateDir::new(tunnel.client_state.path())
            .load_channel("default", &tunnel.server.url)
            .unwrap()
            .unwrap();
        let (status, body) = attach(
            &tunnel.server,
            &saved.channel_id.to_string(),
            Some(saved.token.expose()),
            Some("wow.v1"),
        )
        .await;
        assert_eq!(status, 409, "{body}");
    })
    .await;
}

#[tokio::test]
async fn a_plain_get_on_the_websocket_route_is_a_bad_request() {
    within(STEP, async {
        let server = start_server(|_| {}).await;
        let mine = issue(&server).await;
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}/ws/{}", server.url, mine.channel_id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    })
    .await;
}
