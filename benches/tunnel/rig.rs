//! The pieces under test and around them, each started on loopback: the
//! wow binaries, nginx as the local app, and bore as the raw TCP tunnel.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{oneshot, watch};

use crate::procs::{self, Proc, free_port, ignore};

/// bore's control port: fixed in bore, so one bore server at a time.
const BORE_CONTROL_PORT: u16 = 7835;

/// The external programs a run drives.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `wow-server`, built by cargo with the bench profile.
    pub server: PathBuf,
    /// `wow-client`, likewise.
    pub client: PathBuf,
    /// The load generator.
    pub wrk: PathBuf,
    /// The local app for small webhooks.
    pub nginx: PathBuf,
    /// The raw TCP tunnel to compare with.
    pub bore: PathBuf,
}

impl Tools {
    /// Finds every tool, running `bench/setup.sh` once if one is missing.
    pub fn find_or_install(manifest_dir: &Path) -> anyhow::Result<Tools> {
        if let Ok(tools) = Tools::find() {
            return Ok(tools);
        }
        let setup = manifest_dir.join("bench/setup.sh");
        eprintln!("bench: installing missing tools with {}", setup.display());
        let status = std::process::Command::new(&setup)
            .status()
            .with_context(|| format!("cannot run {}", setup.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", setup.display());
        }
        Tools::find()
    }

    fn find() -> anyhow::Result<Tools> {
        Ok(Tools {
            server: PathBuf::from(env!("CARGO_BIN_EXE_wow-server")),
            client: PathBuf::from(env!("CARGO_BIN_EXE_wow-client")),
            wrk: which("wrk")?,
            nginx: which("nginx")?,
            bore: which("bore")?,
        })
    }
}

/// `name` on `PATH`, or where Debian and cargo install it.
fn which(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("{name} is not installed (bench/setup.sh installs it)"))
}

/// nginx answering every request with a small JSON body: the local app.
pub struct Nginx {
    _proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts one nginx process (no master, one event loop) in `dir`.
    pub async fn start(tools: &Tools, dir: &Path) -> anyhow::Result<Nginx> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, addr))?;
        let args = [
            "-p".to_owned(),
            path_arg(&dir),
            "-c".to_owned(),
            path_arg(&conf),
            "-e".to_owned(),
            path_arg(&dir.join("error.log")),
        ];
        let mut proc = Proc::spawn("nginx", &tools.nginx, &args, ignore(), ignore())?;
        proc.wait_listening(addr).await?;
        Ok(Nginx { _proc: proc, addr })
    }
}

fn nginx_conf(dir: &Path, addr: SocketAddr) -> String {
    let dir = dir.display();
    // One process keeps its lifetime simple (killed with the harness) and
    // leaves the second core to the tunnel; access logs would measure the disk.
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_max_body_size 0;
    server {{
        listen {addr};
        location / {{
            default_type application/json;
            return 200 '{{"ok":true}}';
        }}
    }}
}}
"#
    )
}

/// A running `wow-server`.
pub struct WowServer {
    /// The process, for its memory.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl WowServer {
    /// Starts `wow-server` on 127.0.0.1:0 with a fresh state dir under `dir`.
    pub async fn start(tools: &Tools, dir: &Path) -> anyhow::Result<WowServer> {
        let dir = fresh_dir(dir, "server")?;
        let conf = dir.join("server.toml");
        // Bodies of 100 MiB pass; 10,000 channels fit with room to spare.
        std::fs::write(
            &conf,
            "[limits]\nmax_body = \"1GiB\"\nmax_channels = 20000\n",
        )?;
        let args = [
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--state-dir".to_owned(),
            path_arg(&dir.join("state")),
            "--config".to_owned(),
            path_arg(&conf),
        ];
        let (ready, listening) = oneshot::channel();
        let mut ready = Some(ready);
        let on_stderr = Box::new(move |line: &str| {
            if let Some(addr) = listening_address(line)
                && let Some(ready) = ready.take()
            {
                let _gone = ready.send(addr);
            }
        });
        let mut proc = Proc::spawn("wow-server", &tools.server, &args, ignore(), on_stderr)?;
        let addr = match tokio::time::timeout(Duration::from_secs(20), listening).await {
            Ok(Ok(addr)) => addr,
            _ => {
                proc.check_alive()?;
                bail!("wow-server did not start: {}", proc.last_words());
            }
        };
        Ok(WowServer { proc, addr })
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let rest = line.split("address=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A running `wow-client` and the webhook URLs of its profiles.
pub struct WowClient {
    /// The process, for its memory.
    pub proc: Proc,
    urls: Arc<Mutex<HashMap<String, String>>>,
    attached: watch::Receiver<usize>,
    started: Instant,
}

impl WowClient {
    /// Starts `wow-client` with one profile per `(name, target)`.
    pub fn start(
        tools: &Tools,
        dir: &Path,
        server: &WowServer,
        profiles: &[(String, String)],
    ) -> anyhow::Result<WowClient> {
        let dir = fresh_dir(dir, "client")?;
        let mut conf = format!(
            "server_url = \"{}\"\nstate_dir = \"{}\"\n",
            server.url(),
            dir.join("state").display()
        );
        for (name, target) in profiles {
            let _infallible = write!(conf, "[profiles.{name}]\ntarget = \"{target}\"\n");
        }
        let conf_path = dir.join("client.toml");
        std::fs::write(&conf_path, conf)?;
        let args = ["--config".to_owned(), path_arg(&conf_path)];

        let urls = Arc::new(Mutex::new(HashMap::new()));
        let (count, attached) = watch::channel(0usize);
        let seen = urls.clone();
        // Each attach prints `name  URL -> target`; deliveries print other lines.
        let on_stdout = Box::new(move |line: &str| {
            if !line.contains(" -> ") {
                return;
            }
            let mut words = line.split_whitespace();
            if let (Some(name), Some(url)) = (words.next(), words.next())
                && let Ok(mut seen) = seen.lock()
            {
                seen.insert(name.to_owned(), url.to_owned());
                count.send_replace(seen.len());
            }
        });
        let started = Instant::now();
        let proc = Proc::spawn("wow-client", &tools.client, &args, on_stdout, ignore())?;
        Ok(WowClient {
            proc,
            urls,
            attached,
            started,
        })
    }

    /// Waits until `count` profiles are attached; returns the time since start.
    pub async fn wait_attached(
        &mut self,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let mut attached = self.attached.clone();
        let waited = tokio::time::timeout(limit, attached.wait_for(|n| *n >= count))
            .await
            .is_ok_and(|reached| reached.is_ok());
        if !waited {
            self.proc.check_alive()?;
            let reached = *self.attached.borrow();
            bail!(
                "{reached} of {count} profiles attached after {limit:?}: {}",
                self.proc.last_words()
            );
        }
        Ok(self.started.elapsed())
    }

    /// The webhook URL of profile `name`.
    pub fn url(&self, name: &str) -> anyhow::Result<String> {
        self.urls
            .lock()
            .ok()
            .and_then(|urls| urls.get(name).cloned())
            .with_context(|| format!("profile {name} is not attached"))
    }
}

/// bore: its server and its local end, exposing `target` on a loopback port.
pub struct Bore {
    /// The server process.
    pub server: Proc,
    /// The local process.
    pub local: Proc,
    /// The public end of the tunnel.
    pub addr: SocketAddr,
}

impl Bore {
    /// Starts `bore server` and `bore local` for `target`, both bound to 127.0.0.1.
    pub async fn start(tools: &Tools, target: SocketAddr) -> anyhow::Result<Bore> {
        let control: SocketAddr = ([127, 0, 0, 1], BORE_CONTROL_PORT).into();
        if std::net::TcpListener::bind(control).is_err() {
            bail!("bore's control port {control} is taken: is another bore server running?");
        }
        let server_args = ["server", "--bind-addr", "127.0.0.1"].map(str::to_owned);
        let mut server = Proc::spawn("bore server", &tools.bore, &server_args, ignore(), ignore())?;
        server.wait_listening(control).await?;

        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let local_args = [
            "local".to_owned(),
            target.port().to_string(),
            "--local-host".to_owned(),
            target.ip().to_string(),
            "--to".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            addr.port().to_string(),
        ];
        let mut local = Proc::spawn("bore local", &tools.bore, &local_args, ignore(), ignore())?;
        local.wait_listening(addr).await?;
        Ok(Bore {
            server,
            local,
            addr,
        })
    }
}

/// An empty folder `name` under `dir`.
fn fresh_dir(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if path.exists() {
        std::fs::remove_dir_all(&path)?;
    }
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Peak memory of a process, in MiB.
pub fn peak_mib(proc: &Proc) -> f64 {
    mib(proc.memory().peak)
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Resident memory of a process now, in bytes.
pub fn rss(proc: &Proc) -> u64 {
    procs::memory_of(proc.pid()).map_or(0, |memory| memory.rss)
}
