//! The delivery history (`wow-client history`, `replay`) and the metrics of
//! both daemons.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use wow::client::History;

fn sender() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Every delivery the history in `state` holds, oldest first.
fn history_of(state: &std::path::Path) -> Vec<wow::client::history::Entry> {
    History::open(state).unwrap().list(None, 10_000).unwrap()
}

fn cli(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "--state-dir",
        state.to_str().unwrap(),
        "--config-dir",
        "/nonexistent-wow-test-config",
    ];
    all.extend_from_slice(args);
    std::process::Command::new(env!("CARGO_BIN_EXE_wow-client"))
        .args(&all)
        .env_remove("WOW_CONFIG_DIR")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_kept_shown_and_replayed_byte_exact() {
    within(STEP * 2, async {
        let mut app = start_app(|request| {
            Reply::new(201, format!("got {}", request.body_sha256()))
                .header("Set-Cookie", "a=1")
                .header("Set-Cookie", "b=2")
        })
        .await;
        let tunnel = tunnel(&format!("{}/app", app.url)).await;
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let digest = hex::encode(Sha256::digest(&body));
        let response = sender()
            .post(format!("{}/hook?x=1", tunnel.webhook_url))
            .header("X-Hub-Signature-256", "sha256=abc")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        app.request().await;

        // Bodies and heads are private, in the database and in the side
        // files the running client keeps open.
        for name in [
            "history.sqlite3",
            "history.sqlite3-wal",
            "history.sqlite3-shm",
        ] {
            let path = tunnel.client_state.path().join(name);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }

        // A client that stops has written every delivery it made.
        tunnel.client.shutdown().await.unwrap();
        let entries = history_of(tunnel.client_state.path());
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry.delivery.method, "POST");
        assert_eq!(entry.delivery.path, "/app/hook");
        assert_eq!(entry.delivery.status, 201);
        assert_eq!(entry.request.query.as_deref(), Some("x=1"));
        assert_eq!(entry.request.headers["x-hub-signature-256"], "sha256=abc");
        assert_eq!(entry.request_body.bytes, body);
        let response = entry.response.as_ref().unwrap();
        assert_eq!(response.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(
            entry.response_body.bytes,
            format!("got {digest}").as_bytes()
        );
        let id = entry.delivery.id.unwrap().to_string();

        // The list: the delivery line plus the id.
        let listed = cli(tunnel.client_state.path(), &["history"]);
        let listed = String::from_utf8(listed.stdout).unwrap();
        assert!(
            listed.contains(&"default POST /app/hook 201 ".to_string()),
            "{listed}"
        );
        assert!(listed.trim_end().ends_with(&id), "{listed}");
        let json = cli(tunnel.client_state.path(), &["history", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(json["status"], 201);

        // --show: the request as the app got it, then the answer.
        let shown = cli(tunnel.client_state.path(), &["history", "--show", &id[..8]]);
        let shown = String::from_utf8(shown.stdout).unwrap();
        assert!(shown.contains("> POST /app/hook?x=1"), "{shown}");
        assert!(
            shown.contains("> x-hub-signature-256: sha256=abc"),
            "{shown}"
        );
        assert!(
            shown.contains("[binary or long body: 5000 bytes kept"),
            "{shown}"
        );
        assert!(shown.contains("< 201 Created"), "{shown}");
        assert!(shown.contains("< set-cookie: b=2"), "{shown}");
        let raw = cli(
            tunnel.client_state.path(),
            &["history", "--show", &id, "--raw"],
        );
        assert_eq!(raw.stdout, body);

        // Replay: byte-exact at the app, marked as a replay.
        let replayed = cli(
            tunnel.client_state.path(),
            &["replay", &id, "--target", &format!("{}/app", app.url)],
        );
        assert!(
            replayed.status.success(),
            "{}",
            String::from_utf8_lossy(&replayed.stderr)
        );
        let line = String::from_utf8(replayed.stdout).unwrap();
        assert!(line.contains("POST /app/hook 201"), "{line}");
        assert!(line.contains(&format!("replay-of={id}")), "{line}");
        let again = app.request().await;
        assert_eq!(again.body_sha256(), digest);
        assert_eq!(again.target, "/app/hook?x=1");
        assert_eq!(
            again.header("x-wow-replay-of").as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            again.header("x-hub-signature-256").as_deref(),
            Some("sha256=abc")
        );
        assert_ne!(
            again.header("x-wow-delivery-id").as_deref(),
            Some(id.as_str())
        );
        // The replay is in the history the moment the command ends.
        assert_eq!(history_of(tunnel.client_state.path()).len(), 2);
    })
    .await;
}

#[tokio::test]
async fn the_history_keeps_its_limit_and_marks_cut_bodies() {
    within(STEP * 2, async {
        let app = start_app(|_| Reply::new(200, "ok")).await;
        let server = start_server(|_| {}).await;
        let state = tempfile::tempdir().unwrap();
        let mut config = client_config(&server.url, &app.url, state.path());
        config.history_max = 5;
        config.history_body_max = 100;
        let mut client = start_client(config);
        let url = client.attached().await;
        for n in 0..8 {
            let body = if n == 7 {
                vec![b'x'; 1000]
            } else {
                b"small".to_vec()
            };
            sender()
                .post(format!("{url}?n={n}"))
                .body(body)
                .send()
                .await
                .unwrap();
            client.delivery().await;
        }
        client.shutdown().await.unwrap();
        let entries = history_of(state.path());
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].request.query.as_deref(), Some("n=3"));
        let cut = &entries[4];
        assert!(cut.request_body.truncated());
        assert_eq!(
            (cut.request_body.bytes.len(), cut.request_body.len),
            (100, 1000)
        );

        let id = cut.delivery.id.unwrap().to_string();
        let shown =
            String::from_utf8(cli(state.path(), &["history", "--show", &id]).stdout).unwrap();
        assert!(shown.contains("[cut: 100 of 1000 bytes kept"), "{shown}");
        let refused = cli(state.path(), &["replay", &id, "--target", &app.url]);
        assert_eq!(refused.status.code(), Some(1));
        let error = String::from_utf8(refused.stderr).unwrap();
        assert!(error.contains("cut at 100 of 1000 bytes"), "{error}");
        assert!(error.contains("history_body_max"), "{error}");
    })
    .await;
}

/// Parses Prometheus text into `name{labels}` → value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The sum of every series of metric `name` whose labels include `labels`.
fn sample(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            metric == name
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| *value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_and_never_name_a_channel() {
    within(STEP * 2, async {
        let app = start_app(|request| {
            if request.target.ends_with("/fail") {
                Reply::new(500, "no")
            } else {
                Reply::new(200, "ok")
            }
        })
        .await;
        let server_state = tempfile::tempdir().unwrap();
        let (_server, addr) = spawn_server(server_state.path(), &[]).await;
        let server_url = format!("http://{addr}");
        let client_state = tempfile::tempdir().unwrap();
        let metrics_port = free_port();
        let metrics_listen = format!("127.0.0.1:{metrics_port}");
        let (_client, url) = spawn_client(
            &server_url,
            &app.url,
            client_state.path(),
            &["--metrics-listen", &metrics_listen],
        )
        .await;

        for _ in 0..3 {
            assert_eq!(
                sender()
                    .post(&url)
                    .body("abc")
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        assert_eq!(
            sender()
                .post(format!("{url}/fail"))
                .body("x")
                .send()
                .await
                .unwrap()
                .status(),
            500
        );
        let unknown = format!("{server_url}/webhook/7d1e0c2a-0000-4000-8000-000000000000");
        assert_eq!(sender().post(&unknown).send().await.unwrap().status(), 404);

        let text = sender()
            .get(format!("{server_url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let samples = parse_prometheus(&text);
        assert_eq!(
            sample(
                &samples,
                "wow_webhooks_total",
                &[("outcome", "delivered"), ("class", "2xx")]
            ),
            3.0,
            "{text}"
        );
        assert_eq!(
            sample(
                &samples,
                "wow_webhooks_total",
                &[("outcome", "delivered"), ("class", "5xx")]
            ),
            1.0
        );
        assert_eq!(
            sample(
                &samples,
                "wow_webhooks_total",
                &[("outcome", "rejected"), ("class", "4xx")]
            ),
            1.0
        );
        assert_eq!(sample(&samples, "wow_request_bytes_total", &[]), 10.0);
        assert_eq!(sample(&samples, "wow_channels", &[]), 1.0);
        assert_eq!(sample(&samples, "wow_channels_attached", &[]), 1.0);
        assert_eq!(sample(&samples, "wow_attaches_total", &[]), 1.0);
        assert_eq!(
            sample(&samples, "wow_delivery_duration_seconds_count", &[]),
            4.0
        );
        let channel = url.rsplit('/').next().unwrap();
        assert!(!text.contains(channel), "a channel id leaked into /metrics");

        let client_text = sender()
            .get(format!("http://{metrics_listen}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let client = parse_prometheus(&client_text);
        assert_eq!(
            sample(&client, "wow_client_deliveries_total", &[("class", "2xx")]),
            3.0,
            "{client_text}"
        );
        assert_eq!(
            sample(&client, "wow_client_deliveries_total", &[("class", "5xx")]),
            1.0
        );
    })
    .await;
}

#[tokio::test]
async fn metrics_demand_the_cluster_secret_when_one_is_set() {
    within(STEP, async {
        let server =
            start_server(|config| config.cluster.secret = wow::Secret::new("gossip-key")).await;
        let url = format!("{}/metrics", server.url);
        let refused = sender().get(&url).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["content-type"], "application/json");
        let wrong = sender().get(&url).bearer_auth("nope").send().await.unwrap();
        assert_eq!(wrong.status(), 401);
        let allowed = sender()
            .get(&url)
            .bearer_auth("gossip-key")
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn a_delivery_finished_during_shutdown_is_in_the_history_when_the_client_exits() {
    within(STEP, async {
        let mut app =
            start_app(|_| Reply::new(200, "slow").after(Duration::from_millis(500))).await;
        let tunnel = tunnel(&app.url).await;
        let url = format!("{}/last", tunnel.webhook_url);
        let sent = tokio::spawn(async move { sender().post(url).body("x").send().await });
        app.request().await;
        // The stop comes while the app is still answering.
        tunnel.client.shutdown().await.unwrap();
        assert_eq!(sent.await.unwrap().unwrap().status(), 200);

        let history = History::open(tunnel.client_state.path()).unwrap();
        let entries = history.list(None, 10).unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].delivery.path, "/last");
        assert_eq!(entries[0].delivery.status, 200);
    })
    .await;
}
