//! The processes a run starts (wow-server, wow-client, nginx, bore), all on
//! loopback, and what `/proc` says about their memory.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Lines of stderr kept per process, to explain a failure.
const KEPT_LINES: usize = 30;

/// How long a process gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Called with every line a process prints on one of its outputs.
pub type OnLine = Box<dyn FnMut(&str) + Send>;

/// A process of the run; killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most that was ever resident.
    pub peak: u64,
}

impl Proc {
    /// Starts `program` with the open-files limit raised to the hard limit
    /// (10,000 channels need as many sockets on each side), its outputs
    /// read line by line into `on_stdout` and `on_stderr`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        on_stdout: OnLine,
        mut on_stderr: OnLine,
    ) -> anyhow::Result<Proc> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Nothing of the caller's environment may redirect or reconfigure
        // what is measured: no proxy, no WOW_* layer.
        for (key, _) in std::env::vars() {
            if key.starts_with("WOW_") || key.to_ascii_lowercase().ends_with("_proxy") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id().context("the process ended at once")?;

        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let kept = stderr.clone();
        let keep: OnLine = Box::new(move |line: &str| {
            on_stderr(line);
            if let Ok(mut kept) = kept.lock() {
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line.to_owned());
            }
        });
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_lines(out, on_stdout));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(read_lines(err, keep));
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident and peak memory now.
    pub fn memory(&self) -> Memory {
        memory_of(self.pid).unwrap_or_default()
    }

    /// Fails with the process's last words if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}): {}", self.name, self.last_words());
        }
        Ok(())
    }

    /// The last lines the process wrote on stderr.
    pub fn last_words(&self) -> String {
        self.stderr
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Waits until `addr` accepts connections, failing if the process dies.
    pub async fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{} did not listen on {addr}: {}",
                    self.name,
                    self.last_words()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn read_lines(output: impl AsyncRead + Unpin, mut on_line: OnLine) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        on_line(&line);
    }
}

/// Ignores a process's output.
pub fn ignore() -> OnLine {
    Box::new(|_| {})
}

/// `VmRSS` and `VmHWM` of a process.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = StdListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The soft limit on open files this process's children can raise to.
pub fn hard_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let hard = line.split_whitespace().nth(4)?;
    if hard == "unlimited" {
        return Some(u64::MAX);
    }
    hard.parse().ok()
}
