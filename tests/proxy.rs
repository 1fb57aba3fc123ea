//! The client reaches the relay through an HTTP proxy when `HTTP_PROXY` /
//! `HTTPS_PROXY` say so: `/new` as a proxied request, the WebSocket through
//! a CONNECT tunnel; `NO_PROXY` goes direct.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What a small loopback proxy saw.
#[derive(Default)]
struct Seen {
    connects: AtomicUsize,
    requests: AtomicUsize,
}

/// A forward proxy: CONNECT opens a tunnel; anything else is relayed to
/// the host of its absolute URI as is.
async fn start_proxy() -> (String, Arc<Seen>, Background<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(relay(stream, counters.clone()));
        }
    });
    (url, seen, Background(Some(task)))
}

async fn relay(stream: TcpStream, seen: Arc<Seen>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return;
    };
    let mut head = line.clone();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
            return;
        }
        head.push_str(&header);
        if header == "\r\n" {
            break;
        }
    }
    let (authority, connect) = if method == "CONNECT" {
        seen.connects.fetch_add(1, Ordering::SeqCst);
        (target.to_owned(), true)
    } else {
        seen.requests.fetch_add(1, Ordering::SeqCst);
        let rest = target.trim_start_matches("http://");
        (rest.split('/').next().unwrap().to_owned(), false)
    };
    let Ok(mut upstream) = TcpStream::connect(&authority).await else {
        return;
    };
    let mut client = reader.into_inner();
    if connect {
        let _ = client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await;
    } else {
        let _ = upstream.write_all(head.as_bytes()).await;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

async fn client_through(
    server_url: &str,
    target: &str,
    env: &[(&str, &str)],
) -> (Process, String, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let args = [
        "--server-url",
        server_url,
        "--target-url",
        target,
        "--state-dir",
        state.path().to_str().unwrap(),
        "--config-dir",
        "/nonexistent-wow-test-config",
    ];
    let mut process = spawn_binary_env("wow-client", &args, env, None, "");
    let url = process.attached().await;
    (process, url, state)
}

#[tokio::test]
async fn the_client_goes_through_http_proxy_and_honours_no_proxy() {
    within(STEP, async {
        let mut app = start_app(|_| Reply::new(200, "through")).await;
        let server = start_server(|_| {}).await;
        let (proxy, seen, _proxy_task) = start_proxy().await;
        let env = [
            ("HTTP_PROXY", proxy.as_str()),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ];

        let (_client, url, _state) = client_through(&server.url, &app.url, &env).await;
        assert_eq!(
            seen.requests.load(Ordering::SeqCst),
            1,
            "/new went through the proxy"
        );
        assert_eq!(
            seen.connects.load(Ordering::SeqCst),
            1,
            "the WebSocket went through CONNECT"
        );
        let answer = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.text().await.unwrap(), "through");
        app.request().await;

        let direct = [("HTTP_PROXY", proxy.as_str()), ("NO_PROXY", "127.0.0.1")];
        let (_client, _url, _state) = client_through(&server.url, &app.url, &direct).await;
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
        assert_eq!(seen.connects.load(Ordering::SeqCst), 1);
    })
    .await;
}
