//! Auth mode through the real binaries: `wow-client login` by device flow
//! and by pasted token, what the user sees when a login is needed, and no
//! secret in any log, even at `--log-level trace`.

mod auth_fake;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use auth_fake::*;
use common::*;
use wow::Secret;
use wow::client::StateDir;
use wow::config::Auth;

const JWT_SECRET: &str = "binary-jwt-secret-9a8b7c6d5e4f";
const CLUSTER_SECRET: &str = "binary-cluster-secret-1a2b3c4d";

const NO_CONFIG: [&str; 2] = ["--config-dir", "/nonexistent-wow-test-config"];

fn write_server_config(dir: &Path, fake: &FakeGitHub) -> String {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[auth]
github_client_id = "{CLIENT_ID}"
github_client_secret = "{CLIENT_SECRET}"
github_org = "{ORG}"
jwt_secret = "{JWT_SECRET}"
github_url = "{url}"
github_api_url = "{url}"

[cluster]
secret = "{CLUSTER_SECRET}"
"#,
            url = fake.url
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs `wow-client` with `args` to its end; its exit code, stdout and stderr.
async fn run_client(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&NO_CONFIG);
    let mut process = spawn_binary("wow-client", &all, None, "");
    let mut stdout = Vec::new();
    while let Ok(Some(line)) = within(STEP, process.stdout.next_line()).await {
        stdout.push(line);
    }
    let code = exit_code(&mut process).await;
    (code, stdout.join("\n"), process.all_stderr().await)
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A sender's credentials and body, sent through the tunnel at trace level.
const SENDER_AUTHORIZATION: &str = "Bearer sender-credential-5b1e07";
const SENDER_TOKEN: &str = "gitlab-token-9c44d2";
const SENDER_BODY: &str = "{\"private\":\"sender-body-31f8aa\"}";

#[tokio::test]
async fn device_login_through_the_binary_then_webhooks_with_no_secret_in_any_log() {
    within(Duration::from_secs(120), async {
        let fake = FakeGitHub::start().await;
        fake.with(|state| {
            state
                .device_script
                .extend(["authorization_pending", "slow_down"]);
        });
        let dir = tempfile::tempdir().unwrap();
        let config = write_server_config(dir.path(), &fake);
        let server_state = dir.path().join("server-state");
        let (mut server, addr) = spawn_server(
            &server_state,
            &["--config", &config, "--log-level", "trace"],
        )
        .await;
        let server_url = format!("http://{addr}");

        // The browser flow, so codes and PKCE cross the server's logs too.
        let browser_session = sign_in_in_browser(&server_url).await;

        let client_state = dir.path().join("client-state");
        let state_arg = client_state.to_str().unwrap();
        let mut login_args = vec![
            "login",
            "--server-url",
            &server_url,
            "--state-dir",
            state_arg,
            "--log-level",
            "trace",
        ];
        login_args.extend_from_slice(&NO_CONFIG);
        let mut login = spawn_binary("wow-client", &login_args, None, "");
        let prompt = login.line().await;
        assert_eq!(
            prompt,
            format!(
                "To sign in to {server_url}, open {}/login/device and enter the code WDJB-MJHT",
                fake.url
            )
        );
        assert_eq!(exit_code(&mut login).await, Some(0), "{}", login.stderr());
        let mut rest = Vec::new();
        while let Ok(Some(line)) = login.stdout.next_line().await {
            rest.push(line);
        }
        let rest = rest.join("\n");
        assert!(
            rest.contains(&format!("Signed in to {server_url} as {MEMBER}")),
            "{rest}"
        );

        // The server slowed its polls of GitHub down when told to.
        let polls = fake.with(|state| state.device_polls.clone());
        let slow = polls
            .iter()
            .position(|(_, answer)| *answer == "slow_down")
            .unwrap();
        let gap = polls[slow + 1].0 - polls[slow].0;
        assert!(gap >= Duration::from_secs(5), "{gap:?}");

        // The session is stored privately, per server, and opens /new.
        let session = StateDir::new(&client_state)
            .load_session(&server_url)
            .unwrap()
            .expect("a stored session");
        let session_files = files_under(&client_state.join("sessions"));
        assert_eq!(session_files.len(), 1);
        let mode = std::fs::metadata(&session_files[0])
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let (mut client, url) = spawn_client(
            &server_url,
            &app.url,
            &client_state,
            &["--log-level", "trace"],
        )
        .await;
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(&url)
            .header("authorization", SENDER_AUTHORIZATION)
            .header("x-gitlab-token", SENDER_TOKEN)
            .body(SENDER_BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let delivered = app.request().await;
        assert_eq!(delivered.body, SENDER_BODY.as_bytes());
        assert_eq!(
            delivered.header("x-gitlab-token").as_deref(),
            Some(SENDER_TOKEN)
        );

        signal(client.pid(), "TERM");
        assert_eq!(exit_code(&mut client).await, Some(0));
        signal(server.pid(), "TERM");
        assert_eq!(exit_code(&mut server).await, Some(0));

        let channel = StateDir::new(&client_state)
            .load_channel("default", &server_url)
            .unwrap()
            .unwrap();
        // What senders put in a webhook is theirs: no log holds it either.
        let mut secrets = vec![
            SENDER_AUTHORIZATION.to_owned(),
            SENDER_TOKEN.to_owned(),
            SENDER_BODY.to_owned(),
            CLIENT_SECRET.to_owned(),
            JWT_SECRET.to_owned(),
            CLUSTER_SECRET.to_owned(),
            browser_session,
            session.expose().to_owned(),
            channel.token.expose().to_owned(),
        ];
        secrets.extend(fake.issued());
        assert!(secrets.len() >= 10, "{secrets:?}");
        let logs = [
            ("server", server.all_stderr().await),
            ("login", login.all_stderr().await),
            ("login stdout", rest),
            ("client", client.all_stderr().await),
        ];
        assert!(logs[0].1.contains("TRACE"), "the server logged at trace");
        assert!(logs[3].1.contains("TRACE"), "the client logged at trace");
        for (name, log) in &logs {
            for (index, secret) in secrets.iter().enumerate() {
                if let Some(line) = log.lines().find(|line| line.contains(secret.as_str())) {
                    let shown = line.replace(secret.as_str(), &format!("<secret #{index}>"));
                    panic!("{name} logged a secret: {shown}");
                }
            }
        }

        // Nor does --print-config show them.
        let (code, printed, _) =
            run_binary("wow-server", &["--config", &config, "--print-config"]).await;
        assert_eq!(code, Some(0));
        for secret in [CLIENT_SECRET, JWT_SECRET, CLUSTER_SECRET] {
            assert!(!printed.contains(secret), "--print-config shows a secret");
        }
        let (code, printed, _) = run_client(&[
            "--server-url",
            &server_url,
            "--token",
            session.expose(),
            "--print-config",
        ])
        .await;
        assert_eq!(code, Some(0));
        assert!(!printed.contains(session.expose()));
    })
    .await;
}

/// Runs `binary` with `args` to its end; its exit code, stdout and stderr.
async fn run_binary(binary: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&NO_CONFIG);
    let mut process = spawn_binary(binary, &all, None, "");
    let mut stdout = Vec::new();
    while let Ok(Some(line)) = within(STEP, process.stdout.next_line()).await {
        stdout.push(line);
    }
    let code = exit_code(&mut process).await;
    (code, stdout.join("\n"), process.all_stderr().await)
}

async fn auth_server(fake: &FakeGitHub) -> TestServer {
    start_server(|config| {
        config.auth = Auth {
            github_client_id: CLIENT_ID.to_owned(),
            github_client_secret: Secret::new(CLIENT_SECRET),
            github_org: ORG.to_owned(),
            jwt_secret: Secret::new(JWT_SECRET),
            github_url: fake.url.clone(),
            github_api_url: fake.url.clone(),
            ..Auth::default()
        };
    })
    .await
}

#[tokio::test]
async fn with_device_flow_off_login_points_at_the_browser_and_takes_a_pasted_token() {
    within(Duration::from_secs(60), async {
        let fake = FakeGitHub::start().await;
        fake.with(|state| state.device_flow_enabled = false);
        let server = auth_server(&fake).await;
        let state = tempfile::tempdir().unwrap();
        let state_arg = state.path().to_str().unwrap();

        let (code, stdout, stderr) = run_client(&[
            "login",
            "--server-url",
            &server.url,
            "--state-dir",
            state_arg,
        ])
        .await;
        assert_eq!(code, Some(2));
        let login_url = format!("{}/auth/github", server.url);
        assert!(stdout.contains(&login_url), "{stdout}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains(&login_url) && errors[0].contains("--token"),
            "{stderr}"
        );

        let token = sign_in_in_browser(&server.url).await;
        let (code, stdout, stderr) = run_client(&[
            "login",
            "--server-url",
            &server.url,
            "--state-dir",
            state_arg,
            "--token",
            &token,
        ])
        .await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains(&format!("as {MEMBER}")), "{stdout}");
        let stored = StateDir::new(state.path())
            .load_session(&server.url)
            .unwrap();
        assert_eq!(stored, Some(Secret::new(token)));

        let (code, _, stderr) = run_client(&[
            "login",
            "--server-url",
            &server.url,
            "--state-dir",
            state_arg,
            "--token",
            "not-a-token",
        ])
        .await;
        assert_eq!(code, Some(2));
        assert!(stderr.contains("not a wow session token"), "{stderr}");
    })
    .await;
}

#[tokio::test]
async fn without_a_session_the_client_says_to_log_in_and_exits_2() {
    within(Duration::from_secs(60), async {
        let fake = FakeGitHub::start().await;
        let server = auth_server(&fake).await;
        let state = tempfile::tempdir().unwrap();
        let app = start_app(|_| Reply::new(200, "ok")).await;
        let (code, _, stderr) = run_client(&[
            "--server-url",
            &server.url,
            "--target-url",
            &app.url,
            "--state-dir",
            state.path().to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, Some(2));
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains(&format!("wow-client login --server-url {}", server.url)),
            "{stderr}"
        );
    })
    .await;
}

#[tokio::test]
async fn auth_mode_without_a_cluster_secret_warns_once_at_start() {
    within(Duration::from_secs(60), async {
        let fake = FakeGitHub::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_server_config(dir.path(), &fake);
        let without = std::fs::read_to_string(&config)
            .unwrap()
            .replace(&format!("secret = \"{CLUSTER_SECRET}\""), "");
        std::fs::write(&config, without).unwrap();
        let (mut server, _) = spawn_server(&dir.path().join("state"), &["--config", &config]).await;
        signal(server.pid(), "TERM");
        assert_eq!(exit_code(&mut server).await, Some(0));
        let stderr = server.all_stderr().await;
        let warnings = stderr
            .lines()
            .filter(|line| line.contains("cluster.secret is unset"))
            .count();
        assert_eq!(warnings, 1, "{stderr}");
    })
    .await;
}
