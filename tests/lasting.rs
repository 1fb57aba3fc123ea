//! Channels that last (SPEC §3): the same URL across client and server
//! restarts, state loss, a frozen client, takeover, and graceful drain.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn sender() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(url: &str) -> u16 {
    sender()
        .post(url)
        .body("ping")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_restarted_client_gets_its_url_back() {
    within(STEP, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let server = start_server(|_| {}).await;
        let state = tempfile::tempdir().unwrap();

        let mut first = start_client(client_config(&server.url, &app.url, state.path()));
        let url = first.attached().await;
        first.shutdown().await.unwrap();
        // Offline: the webhook waits in the queue.
        assert_eq!(post(&url).await, 202);

        let mut second = start_client(client_config(&server.url, &app.url, state.path()));
        assert_eq!(second.attached().await, url);
        assert_eq!(
            app.request().await.header("x-wow-redelivered").as_deref(),
            Some("true")
        );
        // Until the queue is empty new webhooks queue behind it (202); either way they arrive.
        assert!(matches!(post(&url).await, 200 | 202));
        app.request().await;
    })
    .await;
}

#[tokio::test]
async fn a_killed_server_comes_back_with_every_url_and_the_client_finds_it() {
    within(STEP * 2, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let server_state = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let (mut server, addr) = spawn_server_at(server_state.path(), &listen, &[]).await;
        let client_state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(
            &format!("http://{addr}"),
            &app.url,
            client_state.path(),
        ));
        let url = client.attached().await;
        assert_eq!(post(&url).await, 200);
        app.request().await;

        // Let the registry reach the disk (it is written within a second of a change).
        let mut state_changes = DirWatch::new(server_state.path());
        while !server_state.path().join("channels.json").exists() {
            state_changes.changed().await;
        }
        signal(server.pid(), "KILL");
        exit_code(&mut server).await;
        let killed = Instant::now();

        let (_server, _) = spawn_server_at(server_state.path(), &listen, &[]).await;
        assert_eq!(client.attached().await, url);
        eprintln!("client back {:?} after the kill", killed.elapsed());
        assert_eq!(post(&url).await, 200);
        app.request().await;
    })
    .await;
}

#[tokio::test]
async fn a_server_that_lost_its_state_takes_the_channel_back_from_its_token() {
    within(STEP * 2, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let server_state = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let secret = ["--jwt-secret", "a-shared-secret-for-this-test"];
        let (mut server, addr) = spawn_server_at(server_state.path(), &listen, &secret).await;
        let client_state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(
            &format!("http://{addr}"),
            &app.url,
            client_state.path(),
        ));
        let url = client.attached().await;

        signal(server.pid(), "KILL");
        exit_code(&mut server).await;
        std::fs::remove_dir_all(server_state.path()).unwrap();

        let (_server, _) = spawn_server_at(server_state.path(), &listen, &secret).await;
        assert_eq!(client.attached().await, url);
        assert_eq!(post(&url).await, 200);
        app.request().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_is_declared_dead_and_comes_back_by_itself() {
    within(Duration::from_secs(150), async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let server = start_server(|_| {}).await;
        let client_state = tempfile::tempdir().unwrap();
        let (mut client, url) = spawn_client(&server.url, &app.url, client_state.path(), &[]).await;
        assert_eq!(post(&url).await, 200);
        app.request().await;

        signal(client.pid(), "STOP");
        let frozen = Instant::now();
        // A webhook sent now does not hang: once the client is declared
        // dead (30 s without an answer) the request the client never saw
        // goes to the offline queue (202; 503 for channels that reject).
        assert_eq!(post(&url).await, 202);
        let detected = frozen.elapsed();
        eprintln!("dead client detected after {detected:?}");
        assert!(detected < Duration::from_secs(35), "{detected:?}");
        assert_eq!(post(&url).await, 202);

        let remaining = Duration::from_secs(60).saturating_sub(frozen.elapsed());
        tokio::time::sleep(remaining).await;
        signal(client.pid(), "CONT");
        let resumed = Instant::now();
        assert_eq!(client.attached().await, url);
        eprintln!("client back {:?} after SIGCONT", resumed.elapsed());
        for _ in 0..2 {
            let redelivered = app.request().await;
            assert_eq!(
                redelivered.header("x-wow-redelivered").as_deref(),
                Some("true")
            );
            assert_eq!(redelivered.body, b"ping");
        }
        assert_eq!(post(&url).await, 200);
        app.request().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_takes_over_from_a_frozen_one_but_not_from_a_live_one() {
    within(STEP * 2, async {
        let first_app = start_app(|_| Reply::new(200, "first")).await;
        let second_app = start_app(|_| Reply::new(200, "second")).await;
        let server = start_server(|_| {}).await;
        let first_state = tempfile::tempdir().unwrap();
        let (first, url) = spawn_client(&server.url, &first_app.url, first_state.path(), &[]).await;

        // The same channel and token, from a copy of the first client's state.
        let saved = wow::client::StateDir::new(first_state.path())
            .load_channel("default", &server.url)
            .unwrap()
            .unwrap();
        let second_state = tempfile::tempdir().unwrap();
        wow::client::StateDir::new(second_state.path())
            .save_channel("default", &server.url, &saved)
            .unwrap();

        // While the first answers pings, the channel is not handed over.
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/ws/{}", server.addr, saved.channel_id),
            )
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", saved.token.expose()).parse().unwrap(),
        );
        let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
        match refused {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                assert_eq!(response.status(), 409)
            }
            other => panic!("expected 409, got {other}"),
        }

        signal(first.pid(), "STOP");
        let frozen = Instant::now();
        let (_second, second_url) =
            spawn_client(&server.url, &second_app.url, second_state.path(), &[]).await;
        assert_eq!(second_url, url);
        eprintln!("takeover {:?} after the freeze", frozen.elapsed());
        let answer = sender()
            .post(&url)
            .body("x")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(answer, "second");
        signal(first.pid(), "CONT");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_delivery_finish_and_the_client_follows_the_restart() {
    within(STEP * 2, async {
        let mut app = start_app(|request| {
            if request.target.ends_with("/slow") {
                Reply::new(200, "slow answer").after(Duration::from_secs(2))
            } else {
                Reply::new(200, "ok")
            }
        })
        .await;
        let server_state = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let (mut server, addr) = spawn_server_at(server_state.path(), &listen, &[]).await;
        let client_state = tempfile::tempdir().unwrap();
        let (mut client, url) = spawn_client(
            &format!("http://{addr}"),
            &app.url,
            client_state.path(),
            &[],
        )
        .await;

        let slow = tokio::spawn(sender().post(format!("{url}/slow")).body("x").send());
        app.request().await;
        signal(server.pid(), "TERM");
        let answer = within(STEP, slow).await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "slow answer");
        assert_eq!(exit_code(&mut server).await, Some(0));

        let (_server, _) = spawn_server_at(server_state.path(), &listen, &[]).await;
        assert_eq!(client.attached().await, url);
        assert_eq!(post(&url).await, 200);

        // The client stops cleanly on SIGTERM too.
        signal(client.pid(), "TERM");
        assert_eq!(exit_code(&mut client).await, Some(0));
    })
    .await;
}

#[tokio::test]
async fn a_refused_channel_stops_the_client_with_one_line_and_exit_2() {
    within(STEP, async {
        let server_state = tempfile::tempdir().unwrap();
        let (_server, addr) = spawn_server(server_state.path(), &[]).await;
        let client_state = tempfile::tempdir().unwrap();
        // A channel this server never issued, with a token it cannot verify.
        wow::client::StateDir::new(client_state.path())
            .save_channel(
                "default",
                &format!("http://{addr}"),
                &wow::client::state::ChannelRecord {
                    channel_id: uuid::Uuid::new_v4(),
                    token: wow::Secret::new("not-a-token"),
                    webhook_url: format!("http://{addr}/webhook/x"),
                },
            )
            .unwrap();
        let mut client = spawn_binary(
            "wow-client",
            &[
                "--server-url",
                &format!("http://{addr}"),
                "--state-dir",
                client_state.path().to_str().unwrap(),
                "--config-dir",
                "/nonexistent-wow-test-config",
            ],
            None,
            "",
        );
        assert_eq!(exit_code(&mut client).await, Some(2));
        let errors: Vec<String> = client
            .all_stderr()
            .await
            .lines()
            .filter(|line| line.starts_with("error:"))
            .map(str::to_owned)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("--reset-channel"), "{}", errors[0]);
    })
    .await;
}

#[tokio::test]
async fn channels_never_attached_expire_and_the_registry_has_a_limit() {
    within(STEP, async {
        let server = start_server(|config| {
            config.channels.cleanup_interval = Duration::from_secs(1);
            config.limits.max_channels = 2;
        })
        .await;
        let http = sender();
        let new = || async {
            http.get(format!("{}/new?offline=reject", server.url))
                .send()
                .await
                .unwrap()
        };
        let issued: serde_json::Value = new().await.json().await.unwrap();
        let url = issued["webhook_url"].as_str().unwrap().to_owned();
        assert_eq!(new().await.status(), 200);
        let full = new().await;
        assert_eq!(full.status(), 503);
        assert_eq!(
            full.json::<serde_json::Value>().await.unwrap()["error"],
            "the server cannot take more channels"
        );

        // Never attached: gone after the cleanup interval (the sweep runs
        // every interval, and the registry is saved after it).
        let mut state_changes = DirWatch::new(server.state.path());
        assert_eq!(post(&url).await, 503);
        while post(&url).await != 404 {
            state_changes.changed().await;
        }
        assert_eq!(
            new().await.status(),
            200,
            "expired channels free their place"
        );
    })
    .await;
}
