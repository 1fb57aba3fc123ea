//! The offline queue (SPEC §5): webhooks for an absent client are stored
//! durably, answered 202, and delivered in arrival order once it is back.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use wow::config::OfflinePolicy;

fn sender() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Issues a channel through a client, then stops that client: the channel
/// exists, its state is saved, nobody holds it.
async fn absent_client(server_url: &str, target: &str) -> (String, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut client = start_client(client_config(server_url, target, state.path()));
    let url = client.attached().await;
    client.shutdown().await.unwrap();
    (url, state)
}

async fn post_file(url: &str, file: &CorpusFile, n: usize) -> (u16, serde_json::Value) {
    let mut request = sender().post(format!("{url}/{}?n={n}", file.scheme));
    for (name, value) in &file.headers {
        request = request.header(name, value);
    }
    let response = request.body(file.body.clone()).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn fifty_webhooks_for_an_absent_client_arrive_once_in_order_and_signed() {
    within(STEP * 4, async {
        let secrets = corpus_secrets();
        let mut app = start_app(move |request| match verify_signature(request, &secrets) {
            Ok(_) => Reply::new(200, "ok"),
            Err(why) => Reply::new(401, why),
        })
        .await;
        let server = start_server(|_| {}).await;
        let (url, state) = absent_client(&server.url, &app.url).await;

        let files = corpus();
        let mut ids = Vec::new();
        for n in 0..50 {
            let (status, body) = post_file(&url, &files[n % files.len()], n).await;
            assert_eq!(status, 202, "{body}");
            ids.push(body["delivery_id"].as_str().unwrap().to_owned());
        }
        let (count, bytes) = server.relay.queue().totals();
        assert_eq!(count, 50);
        let file_size = std::fs::metadata(server.state.path().join("queue.redb"))
            .unwrap()
            .len();
        eprintln!("50 queued: {bytes} bytes of deliveries, queue.redb {file_size} bytes");
        let mode = std::fs::metadata(server.state.path().join("queue.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "queue.redb holds senders' webhooks");

        let mut client = start_client(client_config(&server.url, &app.url, state.path()));
        client.attached().await;
        let started = Instant::now();
        for (n, id) in ids.iter().enumerate() {
            let seen = app.request().await;
            let file = &files[n % files.len()];
            assert_eq!(
                seen.target,
                format!("/{}?n={n}", file.scheme),
                "arrival order"
            );
            assert_eq!(seen.body_sha256(), file.sha256);
            assert!(verify_signature(&seen, &corpus_secrets()).is_ok());
            assert_eq!(
                seen.header("x-wow-delivery-id").as_deref(),
                Some(id.as_str())
            );
            assert_eq!(seen.header("x-wow-redelivered").as_deref(), Some("true"));
            let received_at = seen.header("x-wow-received-at").unwrap();
            assert!(
                humantime::parse_rfc3339(&received_at).is_ok(),
                "{received_at}"
            );
            let line = client.delivery().await;
            assert!(line.redelivered);
            assert!(line.to_string().ends_with(" redelivered"));
        }
        eprintln!("drained 50 in {:?}", started.elapsed());
        within(STEP, server.relay.queue().drained()).await;
        assert!(
            app.requests.try_recv().is_err(),
            "each delivery arrives once"
        );
    })
    .await;
}

#[tokio::test]
async fn webhooks_arriving_during_a_drain_land_after_the_queued_ones() {
    within(STEP * 2, async {
        let mut app = start_app(|_| Reply::new(200, "ok").after(Duration::from_millis(100))).await;
        let server = start_server(|_| {}).await;
        let (url, state) = absent_client(&server.url, &app.url).await;
        for n in 0..5 {
            let status = sender()
                .post(format!("{url}?n={n}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 202);
        }
        let mut client = start_client(client_config(&server.url, &app.url, state.path()));
        client.attached().await;
        let first = app.request().await;
        assert_eq!(first.target, "/?n=0");
        // The queue is draining: new webhooks join it.
        for n in 5..8 {
            let status = sender()
                .post(format!("{url}?n={n}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 202);
        }
        for n in 1..8 {
            assert_eq!(app.request().await.target, format!("/?n={n}"));
        }
        // Once it is empty, webhooks go straight through again.
        within(STEP, server.relay.queue().drained()).await;
        assert_eq!(
            sender()
                .post(format!("{url}?n=8"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    })
    .await;
}

#[tokio::test]
async fn webhooks_arriving_while_the_client_shuts_down_are_queued_not_refused() {
    within(STEP * 2, async {
        let mut app = start_app(|request| {
            let reply = Reply::new(200, "ok");
            if request.target.starts_with("/slow") {
                reply.after(Duration::from_secs(1))
            } else {
                reply
            }
        })
        .await;
        let server = start_server(|_| {}).await;
        let state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(&server.url, &app.url, state.path()));
        let url = client.attached().await;

        let slow_url = format!("{url}/slow");
        let slow = tokio::spawn(async move { sender().post(slow_url).send().await });
        assert_eq!(app.request().await.target, "/slow");
        let stopping = tokio::spawn(client.shutdown());

        // Until the client hears of its shutdown webhooks go through; from
        // then on, while it finishes the slow one, they must be queued.
        let mut n = 0;
        let queued_id = loop {
            let response = sender()
                .post(format!("{url}/late?n={n}"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                200 => assert_eq!(app.request().await.target, format!("/late?n={n}")),
                202 => break body["delivery_id"].as_str().unwrap().to_owned(),
                other => panic!("webhook {n} during the drain got {other}: {body}"),
            }
            n += 1;
        };
        assert_eq!(slow.await.unwrap().unwrap().status(), 200);
        stopping.await.unwrap().unwrap();
        assert_eq!(server.relay.queue().totals().0, 1);

        // The client comes back: the queued webhook arrives, marked as such.
        let mut client = start_client(client_config(&server.url, &app.url, state.path()));
        client.attached().await;
        let redelivered = app.request().await;
        assert_eq!(redelivered.target, format!("/late?n={n}"));
        assert_eq!(
            redelivered.header("x-wow-delivery-id").as_deref(),
            Some(queued_id.as_str())
        );
        client.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_killed_server_keeps_its_queue() {
    within(STEP * 2, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let server_state = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let (mut server, addr) = spawn_server_at(server_state.path(), &listen, &[]).await;
        let server_url = format!("http://{addr}");
        let (url, client_state) = absent_client(&server_url, &app.url).await;
        for n in 0..20 {
            let status = sender()
                .post(format!("{url}?n={n}"))
                .body(format!("body {n}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 202);
        }
        signal(server.pid(), "KILL");
        exit_code(&mut server).await;

        let (_server, _) = spawn_server_at(server_state.path(), &listen, &[]).await;
        let mut client = start_client(client_config(&server_url, &app.url, client_state.path()));
        client.attached().await;
        for n in 0..20 {
            let seen = app.request().await;
            assert_eq!(seen.target, format!("/?n={n}"));
            assert_eq!(seen.body, format!("body {n}").as_bytes());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_when_the_client_dies_comes_again_with_the_same_id() {
    within(STEP * 2, async {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let mut app = start_app(move |_| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first attempt hangs until the client is killed.
                Reply::new(200, "late").after(Duration::from_secs(20))
            } else {
                Reply::new(200, "ok")
            }
        })
        .await;
        let server = start_server(|_| {}).await;
        let state = tempfile::tempdir().unwrap();
        let (mut first, url) = spawn_client(&server.url, &app.url, state.path(), &[]).await;
        signal(first.pid(), "STOP");
        let (status, body) = {
            // The stopped client never answers: the request is queued once it is declared dead.
            let response = sender().post(&url).body("important").send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        };
        assert_eq!(status, 202, "{body}");
        let id = body["delivery_id"].as_str().unwrap().to_owned();
        signal(first.pid(), "KILL");
        exit_code(&mut first).await;

        let (mut second, _) = spawn_client(&server.url, &app.url, state.path(), &[]).await;
        let attempt = app.request().await;
        assert_eq!(
            attempt.header("x-wow-delivery-id").as_deref(),
            Some(id.as_str())
        );
        signal(second.pid(), "KILL");
        exit_code(&mut second).await;

        let (_third, _) = spawn_client(&server.url, &app.url, state.path(), &[]).await;
        let again = app.request().await;
        assert_eq!(
            again.header("x-wow-delivery-id").as_deref(),
            Some(id.as_str())
        );
        assert_eq!(again.header("x-wow-redelivered").as_deref(), Some("true"));
        assert_eq!(again.body, b"important");
    })
    .await;
}

#[tokio::test]
async fn a_full_queue_answers_503_by_count_and_by_bytes() {
    within(STEP, async {
        let app = start_app(|_| Reply::new(200, "ok")).await;
        let server = start_server(|config| {
            config.channels.queue_max = 3;
            config.channels.queue_max_bytes = 64 * 1024;
        })
        .await;
        let (url, _state) = absent_client(&server.url, &app.url).await;
        for _ in 0..3 {
            assert_eq!(
                sender().post(&url).body("x").send().await.unwrap().status(),
                202
            );
        }
        let full = sender().post(&url).body("x").send().await.unwrap();
        assert_eq!(full.status(), 503);
        assert!(full.headers().contains_key("retry-after"));
        assert_eq!(
            full.json::<serde_json::Value>().await.unwrap()["error"],
            "the channel's queue is full"
        );

        let (bytes_url, _state) = absent_client(&server.url, &app.url).await;
        assert_eq!(
            sender()
                .post(&bytes_url)
                .body(vec![0u8; 40_000])
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        assert_eq!(
            sender()
                .post(&bytes_url)
                .body(vec![0u8; 40_000])
                .send()
                .await
                .unwrap()
                .status(),
            503
        );
    })
    .await;
}

#[tokio::test]
async fn deliveries_older_than_the_ttl_are_dropped() {
    within(STEP, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let server =
            start_server(|config| config.channels.queue_ttl = Duration::from_secs(1)).await;
        let (url, state) = absent_client(&server.url, &app.url).await;
        assert_eq!(
            sender()
                .post(format!("{url}?stale"))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        within(STEP, server.relay.queue().drained()).await;
        let mut client = start_client(client_config(&server.url, &app.url, state.path()));
        client.attached().await;
        assert_eq!(
            sender()
                .post(format!("{url}?fresh"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(app.request().await.target, "/?fresh");
    })
    .await;
}

#[tokio::test]
async fn a_channel_whose_client_asks_for_reject_gets_503_while_offline() {
    within(STEP, async {
        let app = start_app(|_| Reply::new(200, "ok")).await;
        let server = start_server(|_| {}).await;
        let state = tempfile::tempdir().unwrap();
        let mut config = client_config(&server.url, &app.url, state.path());
        config.profiles[0].offline = Some(OfflinePolicy::Reject);
        let mut client = start_client(config);
        let url = client.attached().await;
        client.shutdown().await.unwrap();
        let response = sender().post(&url).body("x").send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));

        // The key removed from its configuration, the client's next attach
        // gives the channel back to the server's default: queue.
        let mut client = start_client(client_config(&server.url, &app.url, state.path()));
        assert_eq!(client.attached().await, url);
        client.shutdown().await.unwrap();
        let response = sender().post(&url).body("x").send().await.unwrap();
        assert_eq!(response.status(), 202);
    })
    .await;
}

#[tokio::test]
async fn a_damaged_queue_database_stops_the_server_with_the_fix() {
    within(STEP, async {
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join("queue.redb"), vec![0x5a; 16 * 1024]).unwrap();
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.path().to_str().unwrap(),
            "--config-dir",
            "/nonexistent-wow-test-config",
        ];
        let mut server = spawn_binary("wow-server", &args, None, "");
        assert_eq!(exit_code(&mut server).await, Some(1));
        let stderr = server.all_stderr().await;
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|line| line.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("queue.redb"), "{}", errors[0]);
        assert!(errors[0].contains("move it away"), "{}", errors[0]);
    })
    .await;
}
