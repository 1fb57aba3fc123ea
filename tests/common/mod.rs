//! Test harness: servers, clients and local apps on 127.0.0.1:0, the
//! webhook corpus, and the signature checks a real app would do.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wow::Secret;
use wow::client::{Client, ClientError, Delivery, Event, Target};
use wow::config::{ClientConfig, LogFormat, LogLevel, Profile, ServerConfig};
use wow::server::Server;

/// Every async test step is bounded by this unless it says otherwise.
pub const STEP: Duration = Duration::from_secs(30);

/// Fails the test instead of hanging when `future` takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("test step took longer than {limit:?}"),
    }
}

/// Aborts a background task when dropped, so no test leaks servers.
pub struct Background<T>(pub Option<JoinHandle<T>>);

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------- server

/// A `wow-server` running in this process on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub state: tempfile::TempDir,
    pub relay: Arc<wow::server::Relay>,
    stop: Option<oneshot::Sender<()>>,
    task: Background<anyhow::Result<()>>,
}

/// The configuration tests start from: loopback, a private state dir.
pub fn server_config(state_dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.to_path_buf(),
        log_level: LogLevel::Debug,
        log_format: LogFormat::Text,
        ..ServerConfig::default()
    }
}

pub async fn start_server(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let state = tempfile::tempdir().unwrap();
    let mut config = server_config(state.path());
    tweak(&mut config);
    start_server_in(state, config).await
}

pub async fn start_server_in(state: tempfile::TempDir, config: ServerConfig) -> TestServer {
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(config).unwrap();
    let relay = server.relay().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        url: format!("http://{addr}"),
        state,
        relay,
        stop: Some(stop),
        task: Background(Some(task)),
    }
}

impl TestServer {
    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.0.take() {
            within(STEP, task).await.unwrap().unwrap();
        }
    }
}

// ---------------------------------------------------------------- client

/// A `wow-client` running in this process.
pub struct TestClient {
    pub events: mpsc::UnboundedReceiver<Event>,
    stop: Option<oneshot::Sender<()>>,
    task: Background<Result<(), ClientError>>,
}

/// One unnamed profile from `server_url` to `target`.
pub fn client_config(server_url: &str, target: &str, state_dir: &Path) -> ClientConfig {
    ClientConfig {
        state_dir: state_dir.to_path_buf(),
        log_level: LogLevel::Debug,
        log_format: LogFormat::Text,
        history_max: 1000,
        history_body_max: 1 << 20,
        metrics_listen: None,
        profiles: vec![profile("default", server_url, target)],
    }
}

pub fn profile(name: &str, server_url: &str, target: &str) -> Profile {
    Profile {
        name: name.to_owned(),
        server_url: server_url.to_owned(),
        target: target.parse::<Target>().unwrap(),
        token: Secret::default(),
        insecure: false,
        timeout: Some(Duration::from_secs(10)),
        offline: None,
    }
}

pub fn start_client(config: ClientConfig) -> TestClient {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Client::new(config, events_tx).run(async move {
        let _ = stopped.await;
    }));
    TestClient {
        events,
        stop: Some(stop),
        task: Background(Some(task)),
    }
}

impl TestClient {
    /// Waits for the next "attached" line and returns its webhook URL.
    pub async fn attached(&mut self) -> String {
        loop {
            match within(STEP, self.events.recv()).await {
                Some(Event::Attached { webhook_url, .. }) => return webhook_url,
                Some(Event::Delivered(_)) => continue,
                None => panic!(
                    "client stopped before attaching: {:?}",
                    self.task.0.as_ref().map(|t| t.is_finished())
                ),
            }
        }
    }

    /// Waits for the next delivery line.
    pub async fn delivery(&mut self) -> Delivery {
        loop {
            match within(STEP, self.events.recv()).await {
                Some(Event::Delivered(delivery)) => return delivery,
                Some(Event::Attached { .. }) => continue,
                None => panic!("client stopped"),
            }
        }
    }

    /// Stops the client gracefully and returns how it ended.
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.0.take().unwrap();
        within(STEP, task).await.unwrap()
    }

    /// Waits for the client to stop by itself.
    pub async fn ended(mut self) -> Result<(), ClientError> {
        let task = self.task.0.take().unwrap();
        within(STEP, task).await.unwrap()
    }
}

/// A server, a client attached to it forwarding to `target`, and the URL.
pub struct Tunnel {
    pub server: TestServer,
    pub client: TestClient,
    pub webhook_url: String,
    pub client_state: tempfile::TempDir,
}

pub async fn tunnel(target: &str) -> Tunnel {
    tunnel_with(target, |_| {}).await
}

pub async fn tunnel_with(target: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Tunnel {
    let server = start_server(tweak).await;
    let client_state = tempfile::tempdir().unwrap();
    let mut client = start_client(client_config(&server.url, target, client_state.path()));
    let webhook_url = client.attached().await;
    Tunnel {
        server,
        client,
        webhook_url,
        client_state,
    }
}

// ---------------------------------------------------------------- local app

/// A request as the local app received it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    /// Path and query exactly as on the request line.
    pub target: String,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body ended in an error (the tunnel aborted the request).
    pub aborted: bool,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn body_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.body))
    }
}

/// What the local app answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A local app on 127.0.0.1:0 that records every request.
pub struct App {
    pub addr: SocketAddr,
    pub url: String,
    pub requests: mpsc::UnboundedReceiver<Captured>,
    _task: Background<()>,
}

impl App {
    pub async fn request(&mut self) -> Captured {
        within(STEP, self.requests.recv())
            .await
            .expect("app stopped")
    }
}

type Handler = Arc<dyn Fn(&Captured) -> Reply + Send + Sync>;

pub async fn start_app(handler: impl Fn(&Captured) -> Reply + Send + Sync + 'static) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, requests) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(answer(request, &*handler, &seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    App {
        addr,
        url: format!("http://{addr}"),
        requests,
        _task: Background(Some(task)),
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
    handler: &(dyn Fn(&Captured) -> Reply + Send + Sync),
    seen: &mpsc::UnboundedSender<Captured>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let collected = body.collect().await.map(|b| b.to_bytes());
    let aborted = collected.is_err();
    let body = collected.unwrap_or_default();
    let captured = Captured {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
        aborted,
    };
    let reply = handler(&captured);
    let _ = seen.send(captured);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    response.body(Full::new(Bytes::from(reply.body))).unwrap()
}

// ---------------------------------------------------------------- corpus

/// One delivery of `tests/fixtures/corpus` (see its README for provenance).
#[derive(Debug, Clone)]
pub struct CorpusFile {
    pub path: String,
    pub scheme: String,
    pub method: String,
    pub sha256: String,
    pub secret: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus")
}

pub fn corpus() -> Vec<CorpusFile> {
    let manifest = std::fs::read_to_string(corpus_dir().join("manifest.toml")).unwrap();
    let manifest: toml::Table = manifest.parse().unwrap();
    let files = manifest["file"].as_array().unwrap();
    files
        .iter()
        .map(|file| {
            let text = |key: &str| file[key].as_str().unwrap().to_owned();
            let path = text("path");
            let headers = file["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| {
                    let pair = pair.as_array().unwrap();
                    (
                        pair[0].as_str().unwrap().to_owned(),
                        pair[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            CorpusFile {
                body: std::fs::read(corpus_dir().join(&path)).unwrap(),
                path,
                scheme: text("scheme"),
                method: text("method"),
                sha256: text("sha256"),
                secret: text("test_secret"),
                headers,
            }
        })
        .collect()
}

/// The secrets a local app for the corpus holds, by signing scheme.
pub fn corpus_secrets() -> HashMap<String, Vec<String>> {
    let mut secrets: HashMap<String, Vec<String>> = HashMap::new();
    for file in corpus() {
        let known = secrets.entry(file.scheme).or_default();
        if !known.contains(&file.secret) {
            known.push(file.secret);
        }
    }
    secrets
}

fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Checks the sender's signature as GitHub's, Stripe's, Slack's and
/// GitLab's own SDKs do (timestamps are not checked: the corpus is old).
pub fn verify_signature(
    request: &Captured,
    secrets: &HashMap<String, Vec<String>>,
) -> Result<&'static str, String> {
    let body = request.body.as_slice();
    let known = |scheme: &str| secrets.get(scheme).cloned().unwrap_or_default();
    if let Some(signature) = request.header("x-hub-signature-256") {
        let ok = known("github")
            .iter()
            .any(|secret| signature == format!("sha256={}", hmac_hex(secret, &[body])));
        return ok
            .then_some("github")
            .ok_or_else(|| "bad GitHub signature".to_owned());
    }
    if let Some(signature) = request.header("stripe-signature") {
        let mut timestamp = "";
        let mut candidates = Vec::new();
        for part in signature.split(',') {
            match part.split_once('=') {
                Some(("t", t)) => timestamp = t,
                Some(("v1", v1)) => candidates.push(v1.to_owned()),
                _ => {}
            }
        }
        let ok = known("stripe").iter().any(|secret| {
            let expected = hmac_hex(secret, &[timestamp.as_bytes(), b".", body]);
            candidates.contains(&expected)
        });
        return ok
            .then_some("stripe")
            .ok_or_else(|| "bad Stripe signature".to_owned());
    }
    if let Some(signature) = request.header("x-slack-signature") {
        let timestamp = request
            .header("x-slack-request-timestamp")
            .unwrap_or_default();
        let ok = known("slack").iter().any(|secret| {
            signature
                == format!(
                    "v0={}",
                    hmac_hex(secret, &[b"v0:", timestamp.as_bytes(), b":", body])
                )
        });
        return ok
            .then_some("slack")
            .ok_or_else(|| "bad Slack signature".to_owned());
    }
    if let Some(token) = request.header("x-gitlab-token") {
        return known("gitlab")
            .contains(&token)
            .then_some("gitlab")
            .ok_or_else(|| "bad GitLab token".to_owned());
    }
    Err("unsigned request".to_owned())
}

// ---------------------------------------------------------------- raw HTTP

/// Sends raw bytes to `addr` and reads the whole answer (the request should
/// say `Connection: close`). Returns the status and the raw response.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The path part of a URL (`/webhook/…`).
pub fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .find('/')
        .map_or_else(|| "/".to_owned(), |slash| after_scheme[slash..].to_owned())
}

// ---------------------------------------------------------------- binaries

/// A real `wow-server` or `wow-client` process, killed when dropped.
pub struct Process {
    pub child: tokio::process::Child,
    pub stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pub stderr_lines: Arc<std::sync::Mutex<Vec<String>>>,
    stderr_task: Option<JoinHandle<()>>,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// Peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))
            .unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// The next line the process printed on stdout.
    pub async fn line(&mut self) -> String {
        within(STEP, self.stdout.next_line())
            .await
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "process ended; stderr: {:?}",
                    self.stderr_lines.lock().unwrap()
                )
            })
    }

    /// Waits for the next "attached" line (`name  URL -> target`), skipping
    /// delivery lines, and returns its URL.
    pub async fn attached(&mut self) -> String {
        loop {
            let line = self.line().await;
            if line.contains(" -> ") {
                return line.split_whitespace().nth(1).unwrap().to_owned();
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    /// Everything the process wrote on stderr, once it closed stderr.
    pub async fn all_stderr(&mut self) -> String {
        if let Some(task) = self.stderr_task.take() {
            within(STEP, task).await.unwrap();
        }
        self.stderr()
    }
}

/// Starts a binary of this crate with `args`, its stderr collected and
/// `on_stderr` told of each line (to spot a readiness line).
pub fn spawn_binary(
    name: &str,
    args: &[&str],
    on_stderr: Option<oneshot::Sender<String>>,
    marker: &'static str,
) -> Process {
    spawn_binary_env(name, args, &[], on_stderr, marker)
}

/// [`spawn_binary`] with extra environment variables.
pub fn spawn_binary_env(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    on_stderr: Option<oneshot::Sender<String>>,
    marker: &'static str,
) -> Process {
    use tokio::io::AsyncBufReadExt;
    let program = match name {
        "wow-server" => env!("CARGO_BIN_EXE_wow-server"),
        "wow-client" => env!("CARGO_BIN_EXE_wow-client"),
        other => panic!("unknown binary {other}"),
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_remove("WOW_CONFIG_DIR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let stderr_lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let collected = stderr_lines.clone();
    let stderr_task = tokio::spawn(async move {
        let mut on_stderr = on_stderr;
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains(marker)
                && let Some(ready) = on_stderr.take()
            {
                let _ = ready.send(line.clone());
            }
            collected.lock().unwrap().push(line);
        }
    });
    Process {
        child,
        stdout,
        stderr_lines,
        stderr_task: Some(stderr_task),
    }
}

/// Starts `wow-server` on 127.0.0.1:0 and waits until it listens.
pub async fn spawn_server(state_dir: &Path, extra: &[&str]) -> (Process, SocketAddr) {
    spawn_server_at(state_dir, "127.0.0.1:0", extra).await
}

/// Starts `wow-server` on `listen` and waits until it listens.
pub async fn spawn_server_at(
    state_dir: &Path,
    listen: &str,
    extra: &[&str],
) -> (Process, SocketAddr) {
    let (ready, listening) = oneshot::channel();
    let mut args = vec![
        "--listen",
        listen,
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--config-dir",
        "/nonexistent-wow-test-config",
    ];
    args.extend_from_slice(extra);
    let process = spawn_binary("wow-server", &args, Some(ready), "listening");
    let line = within(STEP, listening)
        .await
        .expect("server exited before listening");
    let addr = line
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    (process, addr)
}

/// Starts `wow-client` and waits for its first "attached" line; returns the webhook URL.
pub async fn spawn_client(
    server_url: &str,
    target: &str,
    state_dir: &Path,
    extra: &[&str],
) -> (Process, String) {
    let mut args = vec![
        "--server-url",
        server_url,
        "--target-url",
        target,
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--config-dir",
        "/nonexistent-wow-test-config",
    ];
    args.extend_from_slice(extra);
    let mut process = spawn_binary("wow-client", &args, None, "");
    let url = process.attached().await;
    (process, url)
}

/// A loopback port that was free a moment ago (for a server that must come
/// back on the same port after a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`, `HUP`) to a process.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits for a process to exit and returns its exit code.
pub async fn exit_code(process: &mut Process) -> Option<i32> {
    within(STEP, process.child.wait()).await.unwrap().code()
}

// ---------------------------------------------------------------- files

/// Changes in a folder, as inotify reports them: a readiness signal for
/// what a daemon writes to its state dir.
pub struct DirWatch {
    changes: mpsc::UnboundedReceiver<()>,
    _watcher: notify::RecommendedWatcher,
}

impl DirWatch {
    /// Starts watching `dir` (not its subfolders). Check the condition
    /// after this, then wait with [`DirWatch::changed`] between checks.
    pub fn new(dir: &Path) -> Self {
        use notify::Watcher as _;
        let (tx, changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })
            .unwrap();
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .unwrap();
        DirWatch {
            changes,
            _watcher: watcher,
        }
    }

    /// Waits for the next change in the folder.
    pub async fn changed(&mut self) {
        within(STEP, self.changes.recv())
            .await
            .expect("watcher stopped");
    }
}
