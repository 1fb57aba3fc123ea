//! Cluster test harness: replicas as real `wow-server` processes on
//! 127.0.0.2, 127.0.0.3 and 127.0.0.4 sharing one HTTP port and one gossip
//! port (as pods would; Linux routes all of 127/8 to loopback), joined
//! through the static peer list, and nginx as a plain round-robin balancer.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::common::{Process, STEP, exit_code, signal, spawn_server_at, within};

/// The cluster secret of the tests' replicas.
pub const SECRET: &str = "cluster-test-secret";
/// The `jwt_secret` every replica shares.
pub const JWT_SECRET: &str = "cluster-test-jwt-secret-0123456789";
/// Where the three replicas live.
pub const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// `sync_interval` in the tests.
pub const SYNC: &str = "1s";
/// max(3 × sync_interval, 10 s): the bound for routes to follow the cluster.
pub const CONVERGE: Duration = Duration::from_secs(10);

/// One HTTP and one gossip port, free on every replica address.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub gossip: u16,
}

/// A port that is free for TCP (and, for gossip, UDP) on each of `ips`.
fn shared_port(ips: &[&str], udp: bool) -> u16 {
    'search: for _ in 0..200 {
        let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut held = vec![first];
        let mut udp_held = Vec::new();
        for ip in ips {
            if *ip != ips[0] {
                match std::net::TcpListener::bind((*ip, port)) {
                    Ok(listener) => held.push(listener),
                    Err(_) => continue 'search,
                }
            }
            if udp {
                match std::net::UdpSocket::bind((*ip, port)) {
                    Ok(socket) => udp_held.push(socket),
                    Err(_) => continue 'search,
                }
            }
        }
        return port;
    }
    panic!("no port free on every replica address");
}

pub fn ports() -> Ports {
    let mut all: Vec<&str> = IPS.to_vec();
    all.push("127.0.0.1");
    Ports {
        http: shared_port(&all, false),
        gossip: shared_port(&all, true),
    }
}

/// How one replica is configured.
#[derive(Debug, Clone)]
pub struct Spec {
    pub ip: String,
    pub ports: Ports,
    /// Static peers (`ip:gossip port`).
    pub peers: Vec<String>,
    pub peer_domain: Option<String>,
    pub secret: Option<String>,
}

impl Spec {
    /// A replica at `ip` with every address of [`IPS`] as its peers.
    pub fn new(ip: &str, ports: Ports) -> Self {
        Spec {
            ip: ip.to_owned(),
            ports,
            peers: IPS
                .iter()
                .map(|ip| format!("{ip}:{}", ports.gossip))
                .collect(),
            peer_domain: None,
            secret: Some(SECRET.to_owned()),
        }
    }
}

/// A `wow-server` process of the cluster.
pub struct Replica {
    pub spec: Spec,
    /// `http://ip:port`.
    pub url: String,
    pub process: Process,
    pub state: tempfile::TempDir,
    config: PathBuf,
}

fn write_config(dir: &Path, spec: &Spec) -> PathBuf {
    let peers: Vec<String> = spec.peers.iter().map(|peer| format!("{peer:?}")).collect();
    let mut text = format!(
        "[auth]\njwt_secret = {JWT_SECRET:?}\n\n[cluster]\npeers = [{}]\nbind_addr = {:?}\n\
         advertise_addr = {:?}\nmemberlist_port = {}\nsync_interval = {SYNC:?}\n",
        peers.join(", "),
        spec.ip,
        spec.ip,
        spec.ports.gossip,
    );
    if let Some(secret) = &spec.secret {
        text.push_str(&format!("secret = {secret:?}\n"));
    }
    if let Some(domain) = &spec.peer_domain {
        text.push_str(&format!("peer_domain = {domain:?}\n"));
    }
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn spawn(spec: &Spec, state: &Path, config: &Path) -> Process {
    let listen = format!("{}:{}", spec.ip, spec.ports.http);
    let (process, _) =
        spawn_server_at(state, &listen, &["--config", config.to_str().unwrap()]).await;
    process
}

/// Starts a replica; it serves HTTP at once, and is ready once joined.
pub async fn start_replica(spec: Spec) -> Replica {
    let state = tempfile::tempdir().unwrap();
    let config = write_config(state.path(), &spec);
    let process = spawn(&spec, state.path(), &config).await;
    Replica {
        url: format!("http://{}:{}", spec.ip, spec.ports.http),
        spec,
        process,
        state,
        config,
    }
}

impl Replica {
    /// SIGTERM, wait for the exit, start again on the same addresses and
    /// state. Returns what the stopped process logged.
    pub async fn restart(&mut self) -> String {
        signal(self.process.pid(), "TERM");
        assert_eq!(exit_code(&mut self.process).await, Some(0));
        let logged = self.process.all_stderr().await;
        self.process = spawn(&self.spec, self.state.path(), &self.config).await;
        logged
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) {
        signal(self.process.pid(), "KILL");
        let _ = exit_code(&mut self.process).await;
    }
}

/// Three replicas joined through their static peer list, each ready and
/// each seeing the other two.
pub async fn start_cluster(ports: Ports) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for ip in IPS {
        replicas.push(start_replica(Spec::new(ip, ports)).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let formed = eventually(CONVERGE, "the three replicas see each other", || {
        let urls = urls.clone();
        async move {
            for url in &urls {
                if get(url, "/readyz", None).await.0 != 200 {
                    return false;
                }
                let mut seen = replica_urls(&traefik(url).await);
                seen.sort();
                let mut expected = urls.clone();
                expected.sort();
                if seen != expected {
                    return false;
                }
            }
            true
        }
    })
    .await;
    eprintln!("cluster of three formed in {formed:?}");
    replicas
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `GET base + path`, with an optional bearer: the status and JSON body
/// (`Null` when there is none or it is not JSON; status 0 when unreachable).
pub async fn get(base: &str, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = http().get(format!("{base}{path}"));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// A replica's `/traefik-config` (`Null` if it does not answer).
pub async fn traefik(base: &str) -> Value {
    get(base, "/traefik-config", Some(SECRET)).await.1
}

/// The replicas the catch-all service balances over.
pub fn replica_urls(config: &Value) -> Vec<String> {
    servers(config, "wow-replicas")
}

/// The servers of a channel's service.
pub fn channel_servers(config: &Value, channel: Uuid) -> Vec<String> {
    servers(config, &format!("wow-channel-{channel}"))
}

fn servers(config: &Value, service: &str) -> Vec<String> {
    config["http"]["services"][service]["loadBalancer"]["servers"]
        .as_array()
        .map(|servers| {
            servers
                .iter()
                .filter_map(|server| server["url"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `config` routes both `/ws/{id}` and `/webhook/{id}` to `owner`.
pub fn routes_to(config: &Value, channel: Uuid, owner: &str) -> bool {
    let routers = &config["http"]["routers"];
    let service = format!("wow-channel-{channel}");
    routers[format!("wow-ws-{channel}")]["service"] == service.as_str()
        && routers[format!("wow-webhook-{channel}")]["service"] == service.as_str()
        && channel_servers(config, channel) == [owner]
}

/// The channel id of a webhook URL.
pub fn channel_of(webhook_url: &str) -> Uuid {
    Uuid::parse_str(webhook_url.rsplit('/').next().unwrap()).unwrap()
}

/// Polls `check` every 100 ms until it holds; fails the test after
/// `limit`. Returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            panic!("not within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which replica holds `channel` now, by their `/internal/channels`.
pub async fn holder(replicas: &[Replica], channel: Uuid) -> Option<usize> {
    for (index, replica) in replicas.iter().enumerate() {
        let (status, list) = get(&replica.url, "/internal/channels", Some(SECRET)).await;
        if status == 200
            && list["webhook_channels"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|id| id == &Value::from(channel.to_string())))
        {
            return Some(index);
        }
    }
    None
}

// ---------------------------------------------------------------- nginx

/// nginx in front of the replicas, round robin, on a loopback port, with
/// its own configuration, pid and logs in a temporary folder. It runs as
/// one process (`master_process off`), so that killing it leaves no worker
/// behind.
pub struct Nginx {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: tokio::process::Child,
}

fn nginx_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!("nginx is not installed: scripts/test.sh installs it (apt-get install -y nginx)")
    })
}

/// Starts nginx balancing over `upstreams` (`ip:port`) and waits until it
/// accepts connections.
pub async fn start_nginx(upstreams: &[String]) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let prefix = dir.path().display().to_string();
    let servers: String = upstreams
        .iter()
        .map(|upstream| format!("        server {upstream} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    let config = format!(
        r#"daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    upstream wow {{
{servers}    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://wow;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_next_upstream error timeout non_idempotent;
        }}
    }}
}}
"#
    );
    let config_path = dir.path().join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();
    let child = tokio::process::Command::new(nginx_binary())
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let address = format!("127.0.0.1:{port}");
    eventually(STEP, "nginx accepts connections", || {
        let address = address.clone();
        async move { tokio::net::TcpStream::connect(&address).await.is_ok() }
    })
    .await;
    Nginx {
        url: format!("http://{address}"),
        dir,
        child,
    }
}

impl Nginx {
    /// nginx's error log so far.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Fails after `limit` instead of hanging (a re-export for the tests).
pub async fn bounded<F: Future>(limit: Duration, future: F) -> F::Output {
    within(limit, future).await
}

// ---------------------------------------------------------------- switch

/// A TCP forwarder on a loopback port whose target can change: a client
/// keeps one server URL while the test chooses the replica behind it.
pub struct Switch {
    pub url: String,
    target: std::sync::Arc<std::sync::Mutex<String>>,
    _task: crate::common::Background<()>,
}

impl Switch {
    /// New connections go to `target` (`ip:port`) from now on.
    pub fn set(&self, target: &str) {
        *self.target.lock().unwrap() = target.to_owned();
    }
}

pub async fn start_switch(target: &str) -> Switch {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = std::sync::Arc::new(std::sync::Mutex::new(target.to_owned()));
    let current = target.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let to = current.lock().unwrap().clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Switch {
        url,
        target,
        _task: crate::common::Background(Some(task)),
    }
}
