//! What durability costs: the client's history write per delivery, the
//! relay's offline queue (store rate, disk per webhook, drain rate after
//! reconnect). Run with `cargo bench --bench storage`; numbers go to stdout.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use http::{Method, StatusCode};
use wow::client::Delivery;
use wow::client::history::{Entry, History, KeptBody};
use wow::protocol::{RequestHead, ResponseHead};

/// A 2 KB JSON body, like a small GitHub delivery.
fn body() -> Vec<u8> {
    let mut body = br#"{"zen":"Keep it logically awesome.","hook_id":292430182,"data":""#.to_vec();
    body.resize(2040, b'x');
    body.extend_from_slice(br#""}"#);
    body
}

fn entry(n: u64, body: &[u8]) -> Entry {
    let mut request = RequestHead::new(Method::POST, "/github");
    for (name, value) in [
        ("content-type", "application/json"),
        ("user-agent", "GitHub-Hookshot/044aadd"),
        ("x-github-event", "push"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        (
            "x-hub-signature-256",
            "sha256=72090b19e52e5a2a46106ff8935571e427bd4102e0ee235783ac104a610f5df5",
        ),
    ] {
        request.headers.append(name, value.parse().unwrap());
    }
    let mut request_body = KeptBody::default();
    request_body.push(body, 1 << 20);
    Entry {
        delivery: Delivery {
            at: SystemTime::now(),
            profile: "github".to_owned(),
            id: Some(uuid::Uuid::new_v4()),
            method: Method::POST,
            path: format!("/github/{n}"),
            status: 200,
            elapsed: Duration::from_millis(2),
            bytes: body.len() as u64,
            redelivered: false,
        },
        target: "http://127.0.0.1:3000/github".to_owned(),
        request,
        request_body,
        response: Some(ResponseHead::new(StatusCode::OK)),
        response_body: KeptBody {
            bytes: b"ok".to_vec(),
            len: 2,
        },
        replay_of: None,
    }
}

fn history() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    let body = body();

    // One transaction per delivery: the worst case (a quiet client).
    let count = 2000;
    let started = Instant::now();
    for n in 0..count {
        history.record(&[entry(n, &body)], 1000).unwrap();
    }
    let single = started.elapsed() / count as u32;

    // Batches, as the background writer does under load.
    let batch: Vec<Entry> = (0..100).map(|n| entry(n, &body)).collect();
    let started = Instant::now();
    for _ in 0..20 {
        history.record(&batch, 1000).unwrap();
    }
    let batched = started.elapsed() / 2000;

    let size: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|file| {
            file.file_name()
                .to_string_lossy()
                .starts_with("history.sqlite3")
        })
        .map(|file| file.metadata().unwrap().len())
        .sum();
    println!("history: {single:?} per delivery written alone, {batched:?} in batches of 100");
    println!(
        "history: {} KiB on disk for 1,000 deliveries of 2 KB (database and WAL)",
        size / 1024
    );
}

async fn queue() {
    let mut app = start_app(|_| Reply::new(200, "ok")).await;
    let server = start_server(|config| config.log_level = wow::config::LogLevel::Warn).await;
    let state = tempfile::tempdir().unwrap();
    let mut client = start_client(client_config(&server.url, &app.url, state.path()));
    let url = client.attached().await;
    client.shutdown().await.unwrap();

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = body();
    let count: u32 = 1000;
    let started = Instant::now();
    for _ in 0..count {
        let status = http
            .post(&url)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202);
    }
    let stored = started.elapsed();
    let disk = std::fs::metadata(server.state.path().join("queue.redb"))
        .unwrap()
        .len();
    println!(
        "queue: {:.0} webhooks/s stored (each fsynced before its 202), {} bytes on disk per 2 KB webhook",
        f64::from(count) / stored.as_secs_f64(),
        disk / u64::from(count)
    );

    let mut client = start_client(client_config(&server.url, &app.url, state.path()));
    client.attached().await;
    let started = Instant::now();
    for _ in 0..count {
        app.request().await;
    }
    let drained = started.elapsed();
    println!(
        "queue: {:.0} deliveries/s drained after reconnect ({count} in {drained:?})",
        f64::from(count) / drained.as_secs_f64()
    );
}

fn main() {
    history();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(within(Duration::from_secs(600), queue()));
}
