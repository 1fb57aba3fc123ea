//! Named profiles and hot reload end to end (SPEC §2): two profiles through
//! one server, a target changed while requests flow, profiles added and
//! removed by saving files, an invalid edit that keeps the old
//! configuration serving, server limits reloaded without dropping a
//! client, and SIGHUP, file watching and `wow-client status` on the real
//! binaries.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use common::*;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use wow::client::{Client, ClientError, Event, StatusBoard};
use wow::config::args::{ClientArgs, ServerArgs};
use wow::config::{EnvVars, OfflinePolicy, load};
use wow::reload::{ClientReload, Control, Controller, Outcome, ServerReload, Trigger, Watcher};
use wow::server::Server;

fn sender() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Replaces `path` the way editors save: a new file renamed over the old.
fn save(path: &Path, text: &str) {
    let temporary = path.with_extension("toml.partial");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn profiles_toml(server_url: &str, state_dir: &Path, profiles: &[(&str, &str)]) -> String {
    let mut text = format!(
        "server_url = {server_url:?}\nstate_dir = {:?}\n",
        state_dir.to_str().unwrap()
    );
    for (name, target) in profiles {
        text.push_str(&format!("[profiles.{name}]\ntarget = {target:?}\n"));
    }
    text
}

/// A client running in this process with its reload controller.
struct ReloadingClient {
    events: mpsc::UnboundedReceiver<Event>,
    controls: mpsc::UnboundedSender<Control>,
    reports: mpsc::UnboundedReceiver<Outcome>,
    status: StatusBoard,
    stop: Option<oneshot::Sender<()>>,
    task: Background<Result<(), ClientError>>,
    _controller: Background<()>,
}

fn start_reloading_client(args: &[&str], watch: bool) -> ReloadingClient {
    let args =
        ClientArgs::try_parse_from(std::iter::once("wow-client").chain(args.iter().copied()))
            .unwrap();
    let env = EnvVars::default();
    let loaded = load::client(&args, &env).unwrap();
    let (events_tx, events) = mpsc::unbounded_channel();
    let client = Client::new(loaded.config.clone(), events_tx);
    let status = client.status();
    let (controls, receiver) = mpsc::unbounded_channel();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let reload = ClientReload::new(client.updates(), args, env, loaded.clone(), None);
    let mut controller = Controller::new(reload, receiver).with_reports(reports_tx);
    if watch {
        controller =
            controller.with_watcher(Watcher::new(&loaded.watch, controls.clone()).unwrap());
    }
    let controller = tokio::spawn(controller.run());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async move {
        let _ = stopped.await;
    }));
    ReloadingClient {
        events,
        controls,
        reports,
        status,
        stop: Some(stop),
        task: Background(Some(task)),
        _controller: Background(Some(controller)),
    }
}

impl ReloadingClient {
    /// The next "attached" line: profile and webhook URL.
    async fn attached(&mut self) -> (String, String) {
        loop {
            match within(STEP, self.events.recv()).await {
                Some(Event::Attached {
                    profile,
                    webhook_url,
                    ..
                }) => return (profile, webhook_url),
                Some(Event::Delivered(_)) => continue,
                None => panic!("client stopped"),
            }
        }
    }

    /// Every profile's webhook URL once `count` profiles attached.
    async fn attached_all(&mut self, count: usize) -> BTreeMap<String, String> {
        let mut urls = BTreeMap::new();
        while urls.len() < count {
            let (profile, url) = self.attached().await;
            urls.insert(profile, url);
        }
        urls
    }

    async fn reload(&mut self) -> Outcome {
        self.controls
            .send(Control::Reload(Trigger::Request))
            .unwrap();
        within(STEP, self.reports.recv()).await.unwrap()
    }

    /// Waits for a reload (from the file watcher) whose outcome satisfies `wanted`.
    async fn report(&mut self, wanted: impl Fn(&Outcome) -> bool) -> Outcome {
        loop {
            let outcome = within(STEP, self.reports.recv()).await.unwrap();
            if wanted(&outcome) {
                return outcome;
            }
        }
    }

    async fn shutdown(mut self) -> Result<(), ClientError> {
        let _ = self.stop.take().unwrap().send(());
        within(STEP, self.task.0.take().unwrap()).await.unwrap()
    }
}

fn changed(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Applied { changed, .. } => changed.clone(),
        other => panic!("expected an applied reload, got {other:?}"),
    }
}

fn applied_with(key: &'static str) -> impl Fn(&Outcome) -> bool {
    move |outcome| matches!(outcome, Outcome::Applied { changed, .. } if changed.iter().any(|k| k == key))
}

async fn post(url: &str, body: &'static str) -> (u16, String) {
    let response = sender().post(url).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn two_profiles_through_one_server_get_only_their_own_webhooks_and_keep_their_urls() {
    within(STEP * 2, async {
        let server = start_server(|_| {}).await;
        let mut stripe = start_app(|_| Reply::new(200, "stripe app")).await;
        let mut github = start_app(|_| Reply::new(200, "github app")).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.toml");
        let state = dir.path().join("state");
        let text = profiles_toml(
            &server.url,
            &state,
            &[
                ("stripe", &format!("{}/s", stripe.url)),
                ("github", &format!("{}/g", github.url)),
            ],
        );
        std::fs::write(&file, text).unwrap();
        let args = ["--config", file.to_str().unwrap()];

        let mut client = start_reloading_client(&args, false);
        let urls = client.attached_all(2).await;
        assert_ne!(urls["stripe"], urls["github"]);
        assert_eq!(
            post(&format!("{}/charge", urls["stripe"]), "s").await,
            (200, "stripe app".into())
        );
        assert_eq!(stripe.request().await.target, "/s/charge");
        assert_eq!(
            post(&format!("{}/push", urls["github"]), "g").await,
            (200, "github app".into())
        );
        assert_eq!(github.request().await.target, "/g/push");
        assert!(
            stripe.requests.try_recv().is_err(),
            "stripe got github's webhook"
        );
        assert!(
            github.requests.try_recv().is_err(),
            "github got stripe's webhook"
        );
        client.shutdown().await.unwrap();

        // A restart reattaches each profile to its own channel.
        let mut client = start_reloading_client(&args, false);
        assert_eq!(client.attached_all(2).await, urls);
        client.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_changed_target_takes_the_next_request_without_a_failure_or_a_reconnect() {
    within(STEP * 2, async {
        let server = start_server(|_| {}).await;
        let mut old = start_app(|_| Reply::new(200, "old")).await;
        let mut new = start_app(|_| Reply::new(200, "new")).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.toml");
        let state = dir.path().join("state");
        std::fs::write(
            &file,
            profiles_toml(&server.url, &state, &[("hook", &old.url)]),
        )
        .unwrap();
        let mut client = start_reloading_client(&["--config", file.to_str().unwrap()], false);
        let (_, url) = client.attached().await;

        // Requests flow one after another the whole time (bounded in count).
        let stop = Arc::new(AtomicBool::new(false));
        let flowing = tokio::spawn({
            let (stop, url) = (stop.clone(), url.clone());
            async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) && answers.len() < 5000 {
                    answers.push(post(&url, "tick").await);
                }
                answers
            }
        });
        for _ in 0..3 {
            old.request().await;
        }

        save(
            &file,
            &profiles_toml(&server.url, &state, &[("hook", &new.url)]),
        );
        let outcome = client.reload().await;
        assert_eq!(changed(&outcome), ["profiles.hook.target"]);
        assert_eq!(post(&url, "after").await, (200, "new".into()));
        new.request().await;
        stop.store(true, Ordering::Relaxed);

        let answers = within(STEP, flowing).await.unwrap();
        assert!(answers.len() >= 3);
        assert!(
            answers.iter().all(|(status, _)| *status == 200),
            "a request failed: {answers:?}"
        );
        assert!(
            answers
                .iter()
                .skip_while(|(_, body)| body == "old")
                .all(|(_, body)| body == "new"),
            "once new, always new"
        );
        assert_eq!(client.status.snapshot()["hook"].target, new.url);
        while let Ok(event) = client.events.try_recv() {
            assert!(
                !matches!(event, Event::Attached { .. }),
                "the tunnel reconnected"
            );
        }
        client.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn saving_files_adds_and_removes_profiles() {
    within(STEP * 3, async {
        // Webhooks to a detached channel are refused, not queued.
        let server = start_server(|config| config.channels.offline = OfflinePolicy::Reject).await;
        let mut a = start_app(|_| Reply::new(200, "a")).await;
        let mut c = start_app(|_| Reply::new(200, "c")).await;
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("client.toml");
        let state = dir.path().join("state");
        let with_a = profiles_toml(&server.url, &state, &[("a", &a.url)]);
        std::fs::write(&main, &with_a).unwrap();
        let mut client =
            start_reloading_client(&["--config-dir", dir.path().to_str().unwrap()], true);
        let (_, url_a) = client.attached().await;

        // A new drop-in folder and file are seen: profile c attaches.
        let dropins = dir.path().join("client.d");
        std::fs::create_dir(&dropins).unwrap();
        std::fs::write(
            dropins.join("20-c.toml"),
            format!("[profiles.c]\ntarget = {:?}\n", c.url),
        )
        .unwrap();
        client.report(applied_with("profiles.c (added)")).await;
        let (profile, url_c) = client.attached().await;
        assert_eq!(profile, "c");
        assert_eq!(post(&url_c, "to c").await, (200, "c".into()));
        assert_eq!(c.request().await.body, b"to c");

        // An atomic-rename save that drops profile a detaches it; c stays.
        save(&main, &profiles_toml(&server.url, &state, &[]));
        client.report(applied_with("profiles.a (removed)")).await;
        let mut changes = client.status.subscribe();
        while client.status.snapshot().contains_key("a") {
            within(STEP, changes.changed()).await.unwrap();
        }
        assert_eq!(
            post(&url_a, "to a").await.0,
            503,
            "nobody holds a's channel any more"
        );
        assert_eq!(post(&url_c, "to c").await, (200, "c".into()));
        assert!(a.requests.try_recv().is_err());

        // Added back, a gets its old URL again.
        save(&main, &with_a);
        client.report(applied_with("profiles.a (added)")).await;
        assert_eq!(client.attached().await, ("a".to_owned(), url_a));
        client.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_invalid_edit_is_rejected_with_file_and_key_and_the_old_config_serves() {
    within(STEP * 2, async {
        let server = start_server(|_| {}).await;
        let mut app = start_app(|_| Reply::new(200, "app")).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.toml");
        let state = dir.path().join("state");
        let good = profiles_toml(&server.url, &state, &[("hook", &app.url)]);
        std::fs::write(&file, &good).unwrap();
        let mut client = start_reloading_client(&["--config", file.to_str().unwrap()], false);
        let (_, url) = client.attached().await;

        save(
            &file,
            &format!("{good}timeout = \"soon\"\ncolour = \"blue\"\n"),
        );
        let Outcome::Rejected(errors) = client.reload().await else {
            panic!("an invalid configuration was applied");
        };
        let shown = file.display().to_string();
        assert_eq!(errors.0.len(), 2, "{errors:?}");
        assert!(
            errors.0.iter().any(
                |e| e.starts_with(&format!("{shown}: profiles.hook.timeout: invalid duration"))
            ),
            "{errors:?}"
        );
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.starts_with(&format!("{shown}: profiles.hook.colour: unknown key"))),
            "{errors:?}"
        );
        assert_eq!(post(&url, "still").await, (200, "app".into()));
        assert_eq!(app.request().await.body, b"still");

        save(&file, &good);
        assert_eq!(client.reload().await, Outcome::Unchanged);
        client.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_server_reload_applies_limits_to_new_requests_and_names_restart_only_keys() {
    within(STEP * 2, async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        let state = dir.path().join("state");
        let config = |max_body: &str, listen: &str| {
            format!(
                "listen = {listen:?}\nstate_dir = {:?}\n[limits]\nmax_body = {max_body:?}\n",
                state.to_str().unwrap()
            )
        };
        std::fs::write(&file, config("1MiB", "127.0.0.1:0")).unwrap();
        let args =
            ServerArgs::try_parse_from(["wow-server", "--config", file.to_str().unwrap()]).unwrap();
        let loaded = load::server(&args, &EnvVars::default()).unwrap();
        let listener = TcpListener::bind(loaded.config.listen).await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = Server::new(loaded.config.clone()).unwrap();
        let (controls, receiver) = mpsc::unbounded_channel();
        let (reports_tx, mut reports) = mpsc::unbounded_channel();
        let reload = ServerReload::new(
            server.relay().clone(),
            args,
            EnvVars::default(),
            loaded,
            None,
        );
        let relay = server.relay().clone();
        let controller = Controller::new(reload, receiver).with_reports(reports_tx);
        let _serving = Background(Some(tokio::spawn(server.run(listener, controller.run()))));

        let app = start_app(|_| Reply::new(200, "ok")).await;
        let client_state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(
            &format!("http://{address}"),
            &app.url,
            client_state.path(),
        ));
        let url = client.attached().await;
        let body = vec![b'x'; 100 << 10];
        let big = |url: String, body: Vec<u8>| async move {
            sender()
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        assert_eq!(big(url.clone(), body.clone()).await, 200);

        save(&file, &config("64KiB", "127.0.0.1:1"));
        controls.send(Control::Reload(Trigger::Hangup)).unwrap();
        let outcome = within(STEP, reports.recv()).await.unwrap();
        assert_eq!(
            outcome,
            Outcome::Applied {
                changed: vec!["limits.max_body".into()],
                needs_restart: vec!["listen".into()],
            }
        );
        assert_eq!(relay.config().limits.max_body, 64 << 10);
        assert_eq!(
            relay.config().listen.to_string(),
            "127.0.0.1:0",
            "the running address stays"
        );
        assert_eq!(big(url.clone(), body).await, 413);
        assert_eq!(post(&url, "small").await, (200, "ok".into()));
        while let Ok(event) = client.events.try_recv() {
            assert!(
                !matches!(event, Event::Attached { .. }),
                "the client reconnected"
            );
        }
        let _ = controls.send(Control::Shutdown);
    })
    .await;
}

// ---------------------------------------------------------------- binaries

/// A real daemon whose stderr lines can be awaited.
struct Daemon {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
}

fn spawn_daemon(binary: &str, args: &[&str]) -> Daemon {
    let program = match binary {
        "wow-server" => env!("CARGO_BIN_EXE_wow-server"),
        _ => env!("CARGO_BIN_EXE_wow-client"),
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, stderr) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    Daemon {
        child,
        stdout,
        stderr,
    }
}

impl Daemon {
    /// Waits for a stderr line holding every one of `parts`.
    async fn logged(&mut self, parts: &[&str]) -> String {
        loop {
            let line = within(STEP, self.stderr.recv())
                .await
                .expect("daemon exited");
            if parts.iter().all(|part| line.contains(part)) {
                return line;
            }
        }
    }

    async fn line(&mut self) -> String {
        within(STEP, self.stdout.next_line())
            .await
            .unwrap()
            .expect("daemon exited")
    }

    fn hangup(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn client_status(config: &Path, state: &Path) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wow-client"))
        .args([
            "status",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn the_daemons_reload_on_sighup_and_on_file_changes() {
    within(STEP * 4, async {
        let dir = tempfile::tempdir().unwrap();
        let server_file = dir.path().join("server.toml");
        let server_state = dir.path().join("server-state");
        let server_toml = |level: &str| {
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\nlog_level = {level:?}\n",
                server_state.to_str().unwrap()
            )
        };
        std::fs::write(&server_file, server_toml("info")).unwrap();
        let mut server = spawn_daemon("wow-server", &["--config", server_file.to_str().unwrap()]);
        let listening = server.logged(&["listening"]).await;
        let address = listening
            .split("address=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();

        let old = start_app(|_| Reply::new(200, "old")).await;
        let new = start_app(|_| Reply::new(200, "new")).await;
        let client_file = dir.path().join("client.toml");
        let client_state: PathBuf = dir.path().join("client-state");
        let client_toml = |target: &str| {
            profiles_toml(
                &format!("http://{address}"),
                &client_state,
                &[("hook", target)],
            )
        };
        std::fs::write(&client_file, client_toml(&old.url)).unwrap();
        let mut client = spawn_daemon("wow-client", &["--config", client_file.to_str().unwrap()]);
        let line = client.line().await;
        assert!(line.starts_with("hook "), "{line}");
        let url = line.split_whitespace().nth(1).unwrap().to_owned();
        assert_eq!(post(&url, "one").await, (200, "old".into()));

        // SIGHUP with nothing changed: one line, and the tunnel stays.
        server.hangup();
        server.logged(&["reload unchanged", "trigger=SIGHUP"]).await;
        client.hangup();
        client.logged(&["reload unchanged", "trigger=SIGHUP"]).await;

        // Saving the client's file: the next request goes to the new target.
        save(&client_file, &client_toml(&new.url));
        client
            .logged(&["reload applied", "changed=profiles.hook.target"])
            .await;
        assert_eq!(post(&url, "two").await, (200, "new".into()));

        // A new log level applies at once.
        save(&server_file, &server_toml("debug"));
        server
            .logged(&["reload applied", "changed=log_level"])
            .await;
        assert_eq!(post(&url, "three").await, (200, "new".into()));
        server.logged(&["DEBUG"]).await;

        // `wow-client status` reads what the running client wrote.
        let mut status = client_status(&client_file, &client_state);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |_| {
            let _ = events_tx.send(());
        })
        .unwrap();
        notify::Watcher::watch(
            &mut watcher,
            &client_state,
            notify::RecursiveMode::NonRecursive,
        )
        .unwrap();
        while !status.1.contains("attached") || !status.1.contains(&new.url) {
            within(STEP, events.recv()).await;
            status = client_status(&client_file, &client_state);
        }
        assert_eq!(status.0, 0, "{}", status.1);
        assert!(
            status
                .1
                .starts_with(&format!("hook     {url} -> {}", new.url)),
            "{}",
            status.1
        );

        // Stopped, the client leaves no status behind.
        let pid = client.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        within(STEP, client.child.wait()).await.unwrap();
        let (code, text) = client_status(&client_file, &client_state);
        assert_eq!(code, 1);
        assert!(text.contains("no wow-client is running"), "{text}");
    })
    .await;
}
