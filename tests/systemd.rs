//! The daemons under a stand-in for systemd: each test listens on its own
//! `NOTIFY_SOCKET` (and, where it may, on journald's socket) and checks what
//! the real binaries tell it: READY, STATUS, WATCHDOG, STOPPING, journal
//! entries with their fields.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use common::{STEP, within};

const SERVER: &str = env!("CARGO_BIN_EXE_wow-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_wow-client");

/// Where journald takes native entries; tests that need it absent or
/// present look here first.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

// ---------------------------------------------------------------- systemd

/// A datagram socket in a private temp dir, as systemd's `NOTIFY_SOCKET`.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Notifications {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notifications {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message, its `KEY=value` lines joined by newlines.
    async fn next(&self) -> String {
        let mut buffer = vec![0; 4096];
        let length = within(STEP, self.socket.recv(&mut buffer)).await.unwrap();
        String::from_utf8(buffer[..length].to_vec()).unwrap()
    }

    /// Reads messages until one has `line`; returns every message read.
    async fn until(&self, line: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let message = self.next().await;
            let found = message.lines().any(|l| l == line);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }

    /// Reads messages until every one of `lines` was in one of them, in
    /// any order (READY and the first STATUS race each other).
    async fn until_all(&self, lines: &[&str]) {
        let mut missing: Vec<&str> = lines.to_vec();
        while !missing.is_empty() {
            let message = self.next().await;
            missing.retain(|wanted| !message.lines().any(|line| line == *wanted));
        }
    }
}

// ---------------------------------------------------------------- daemons

/// A real `wow-server` or `wow-client`, killed when dropped.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::UnboundedReceiver<String>,
}

/// What a daemon's environment holds besides `NOTIFY_SOCKET`.
#[derive(Default)]
struct Env {
    watchdog_usec: Option<String>,
    watchdog_pid: Option<String>,
    /// `WATCHDOG_PID` set to the daemon's own pid, as systemd does.
    watchdog_pid_is_own: bool,
    journal_stream: Option<String>,
    /// stderr to this file instead of a pipe.
    stderr_file: Option<PathBuf>,
    /// Behind a private `/run` whose journal socket is this dir's `socket`.
    journal_dir: Option<PathBuf>,
}

impl Daemon {
    fn start(program: &str, args: &[&str], notify: &Path, env: Env) -> Daemon {
        let mut command = wrapped(program, args, &env);
        command
            .env_remove("WOW_CONFIG_DIR")
            .env_remove("WOW_LOG_FORMAT")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(usec) = &env.watchdog_usec {
            command.env("WATCHDOG_USEC", usec);
        }
        if let Some(pid) = &env.watchdog_pid {
            command.env("WATCHDOG_PID", pid);
        }
        if let Some(stream) = &env.journal_stream {
            command.env("JOURNAL_STREAM", stream);
        }
        match &env.stderr_file {
            Some(path) => command.stderr(std::fs::File::create(path).unwrap()),
            None => command.stderr(Stdio::piped()),
        };
        let mut child = command.spawn().unwrap();

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = mpsc::unbounded_channel();
        if let Some(pipe) = child.stderr.take() {
            let collected = stderr.clone();
            tokio::spawn(async move {
                let mut pipe = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = pipe.next_line().await {
                    collected.lock().unwrap().push(line.clone());
                    let _ = sender.send(line);
                }
            });
        }
        Daemon {
            child,
            stderr,
            lines,
        }
    }

    fn server(state: &Path, notify: &Path, extra: &[&str], env: Env) -> Daemon {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap(),
            "--config-dir",
            "/nonexistent-wow-test-config",
        ];
        args.extend_from_slice(extra);
        Daemon::start(SERVER, &args, notify, env)
    }

    fn client(server_url: &str, state: &Path, notify: &Path, extra: &[&str], env: Env) -> Daemon {
        let mut args = vec![
            "--server-url",
            server_url,
            "--target-url",
            "http://127.0.0.1:9/app",
            "--state-dir",
            state.to_str().unwrap(),
            "--config-dir",
            "/nonexistent-wow-test-config",
        ];
        args.extend_from_slice(extra);
        Daemon::start(CLIENT, &args, notify, env)
    }

    /// The next stderr line containing `text`.
    async fn stderr_line(&mut self, text: &str) -> String {
        loop {
            match within(STEP, self.lines.recv()).await {
                Some(line) if line.contains(text) => return line,
                Some(_) => continue,
                None => panic!("no stderr line with {text:?}: {}", self.stderr()),
            }
        }
    }

    /// The address a server logged as `listening address=…`.
    async fn listening_address(&mut self) -> SocketAddr {
        let line = self.stderr_line("listening").await;
        line.split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM, as `systemctl stop` does.
    async fn terminate(&self) {
        let pid = self.child.id().expect("daemon is running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGHUP, as `systemctl reload` does.
    async fn hangup(&self) {
        let pid = self.child.id().expect("daemon is running").to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    async fn exit_status(&mut self) -> ExitStatus {
        within(STEP, self.child.wait()).await.unwrap()
    }
}

/// The command that runs `program`: directly, or through `sh` when the
/// daemon must learn its own pid (`WATCHDOG_PID=$$` then `exec`: the shell's
/// pid becomes the daemon's) or run behind a private `/run`.
fn wrapped(program: &str, args: &[&str], env: &Env) -> Command {
    if env.journal_dir.is_none() && !env.watchdog_pid_is_own {
        let mut command = Command::new(program);
        command.args(args);
        return command;
    }
    let mut script = String::new();
    if let Some(dir) = &env.journal_dir {
        script.push_str(&format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
             mount --bind '{}' /run/systemd/journal && ",
            dir.display()
        ));
    }
    if env.watchdog_pid_is_own {
        script.push_str("WATCHDOG_PID=$$ ");
    }
    script.push_str("exec \"$0\" \"$@\"");
    let mut command = match env.journal_dir {
        Some(_) => {
            let mut command = Command::new("unshare");
            command.args(["--mount", "--propagation", "private", "sh", "-c"]);
            command
        }
        None => {
            let mut command = Command::new("sh");
            command.arg("-c");
            command
        }
    };
    command.arg(script).arg(program).args(args);
    command
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn the_server_is_ready_once_listening_pings_the_watchdog_and_says_when_it_stops() {
    within(Duration::from_secs(90), async {
        let notify = Notifications::bind();
        let state = tempfile::tempdir().unwrap();
        let env = Env {
            watchdog_usec: Some("1000000".into()),
            watchdog_pid_is_own: true,
            ..Env::default()
        };
        let mut server = Daemon::server(state.path(), &notify.path, &[], env);

        notify
            .until_all(&["READY=1", "STATUS=0 channels, 0 attached"])
            .await;
        server.listening_address().await;

        // WATCHDOG_USEC=1s: a ping every 0.5s. Four intervals take about 2s;
        // the bounds leave a second for a busy machine to deliver late (or
        // deliver queued pings at once), and catch a ping loop that spins or
        // one that lets the timeout pass.
        let first = notify.until("WATCHDOG=1").await;
        assert_eq!(first.last().unwrap(), "WATCHDOG=1\n");
        let started = Instant::now();
        for _ in 0..4 {
            notify.until("WATCHDOG=1").await;
        }
        let span = started.elapsed();
        assert!(
            span >= Duration::from_secs(1) && span <= Duration::from_secs(5),
            "four watchdog intervals took {span:?}, expected about 2s"
        );

        server.terminate().await;
        notify.until("STOPPING=1").await;
        let status = server.exit_status().await;
        assert_eq!(status.code(), Some(0), "{}", server.stderr());
    })
    .await;
}

#[tokio::test]
async fn the_watchdog_stays_quiet_when_systemd_named_another_process() {
    within(Duration::from_secs(60), async {
        let notify = Notifications::bind();
        let state = tempfile::tempdir().unwrap();
        // Inherited from a parent: WATCHDOG_PID is not the daemon's pid.
        let env = Env {
            watchdog_usec: Some("200000".into()),
            watchdog_pid: Some(std::process::id().to_string()),
            ..Env::default()
        };
        let mut server = Daemon::server(state.path(), &notify.path, &[], env);
        notify.until("READY=1").await;
        server.listening_address().await;

        // Pings would come every 100ms; watch ten intervals.
        let window = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                message = notify.next() => {
                    assert!(!message.contains("WATCHDOG=1"), "unexpected ping: {message:?}");
                }
            }
        }

        server.terminate().await;
        notify.until("STOPPING=1").await;
        assert_eq!(server.exit_status().await.code(), Some(0));
    })
    .await;
}

#[tokio::test]
async fn the_client_is_ready_while_its_relay_is_unreachable() {
    within(Duration::from_secs(60), async {
        let notify = Notifications::bind();
        let state = tempfile::tempdir().unwrap();
        let relay = format!("http://127.0.0.1:{}", closed_port());
        let env = Env {
            watchdog_usec: Some("400000".into()),
            ..Env::default()
        };
        let mut client = Daemon::client(&relay, state.path(), &notify.path, &[], env);

        notify
            .until_all(&["READY=1", "STATUS=default: reconnecting"])
            .await;
        notify.until("WATCHDOG=1").await;
        notify.until("WATCHDOG=1").await;

        client.terminate().await;
        notify.until("STOPPING=1").await;
        let status = client.exit_status().await;
        assert_eq!(status.code(), Some(0), "{}", client.stderr());
    })
    .await;
}

#[tokio::test]
async fn statuses_follow_channels_and_tunnels_until_both_daemons_stop() {
    within(Duration::from_secs(90), async {
        let server_notify = Notifications::bind();
        let server_state = tempfile::tempdir().unwrap();
        let mut server = Daemon::server(
            server_state.path(),
            &server_notify.path,
            &[],
            Env::default(),
        );
        let address = server.listening_address().await;
        server_notify.until("READY=1").await;

        let client_notify = Notifications::bind();
        let client_state = tempfile::tempdir().unwrap();
        let mut client = Daemon::client(
            &format!("http://{address}"),
            client_state.path(),
            &client_notify.path,
            &[],
            Env::default(),
        );
        client_notify
            .until_all(&["READY=1", "STATUS=default: attached"])
            .await;
        server_notify.until("STATUS=1 channel, 1 attached").await;

        client.terminate().await;
        client_notify.until("STOPPING=1").await;
        assert_eq!(
            client.exit_status().await.code(),
            Some(0),
            "{}",
            client.stderr()
        );
        server_notify.until("STATUS=1 channel, 0 attached").await;

        server.terminate().await;
        server_notify.until("STOPPING=1").await;
        server_notify
            .until("STATUS=draining in-flight deliveries")
            .await;
        assert_eq!(
            server.exit_status().await.code(),
            Some(0),
            "{}",
            server.stderr()
        );
    })
    .await;
}

#[tokio::test]
async fn journald_logging_falls_back_to_text_without_a_journal() {
    if Path::new(JOURNAL_SOCKET).exists() {
        eprintln!("skipped: this machine runs journald; see the journal field test");
        return;
    }
    within(Duration::from_secs(60), async {
        let notify = Notifications::bind();
        let state = tempfile::tempdir().unwrap();
        let mut server = Daemon::server(
            state.path(),
            &notify.path,
            &["--log-format", "journald"],
            Env::default(),
        );
        let warning = server.stderr_line("cannot reach journald").await;
        assert!(warning.contains("WARN"), "{warning}");
        server.listening_address().await;
        notify.until("READY=1").await;
        server.terminate().await;
        assert_eq!(server.exit_status().await.code(), Some(0));
    })
    .await;
}

#[tokio::test]
async fn journald_is_the_default_only_when_stderr_is_the_journal_stream() {
    within(Duration::from_secs(60), async {
        let journal_exists = Path::new(JOURNAL_SOCKET).exists();
        let logs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();

        // systemd names the stream it gave as stderr: here, a file.
        for names_our_stderr in [true, false] {
            let notify = Notifications::bind();
            let path = logs.path().join(format!("stderr-{names_our_stderr}"));
            std::fs::File::create(&path).unwrap();
            let metadata = std::fs::metadata(&path).unwrap();
            let stream = if names_our_stderr {
                format!("{}:{}", metadata.dev(), metadata.ino())
            } else {
                format!("{}:{}", metadata.dev(), metadata.ino() + 1)
            };
            let env = Env {
                journal_stream: Some(stream),
                stderr_file: Some(path.clone()),
                ..Env::default()
            };
            let mut server = Daemon::server(state.path(), &notify.path, &[], env);
            // The server logs "listening" before it tells READY.
            notify.until("READY=1").await;
            server.terminate().await;
            assert_eq!(server.exit_status().await.code(), Some(0));

            let text = std::fs::read_to_string(&path).unwrap();
            let chose_journald = text.contains("cannot reach journald")
                || (journal_exists && !text.contains("listening"));
            assert_eq!(chose_journald, names_our_stderr, "stderr was:\n{text}");
        }
    })
    .await;
}

// ---------------------------------------------------------------- journal

/// One native journal entry: every field, by name, in arrival order.
type Entry = HashMap<String, Vec<String>>;

/// Parses journald's native protocol: `KEY=value` lines, or `KEY`, a
/// newline, a little-endian u64 length, the value and a newline.
fn parse_entry(mut data: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n').unwrap();
        let line = &data[..end];
        data = &data[end + 1..];
        let (name, value) = match line.iter().position(|&b| b == b'=') {
            Some(equals) => (&line[..equals], line[equals + 1..].to_vec()),
            None => {
                let length = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
                let value = data[8..8 + length].to_vec();
                data = &data[8 + length + 1..];
                (line, value)
            }
        };
        entry
            .entry(String::from_utf8(name.to_vec()).unwrap())
            .or_default()
            .push(String::from_utf8(value).unwrap());
    }
    entry
}

/// A stand-in journald: a datagram socket named `socket` in a temp dir that
/// a daemon sees as `/run/systemd/journal` (a bind mount in its own mount
/// namespace, so the machine's `/run` is untouched).
struct Journal {
    socket: UnixDatagram,
    dir: tempfile::TempDir,
    /// Every entry received so far: two daemons write here in any order.
    entries: Vec<Entry>,
}

impl Journal {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join("socket")).unwrap();
        Journal {
            socket,
            dir,
            entries: Vec::new(),
        }
    }

    /// The first entry, received so far or from now on, that matches;
    /// empty datagrams (the layer's probe at start-up) are skipped.
    async fn find(&mut self, matches: impl Fn(&Entry) -> bool) -> Entry {
        if let Some(entry) = self.entries.iter().find(|entry| matches(entry)) {
            return entry.clone();
        }
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let length = within(STEP, self.socket.recv(&mut buffer)).await.unwrap();
            if length == 0 {
                continue;
            }
            let entry = parse_entry(&buffer[..length]);
            self.entries.push(entry.clone());
            if matches(&entry) {
                return entry;
            }
        }
    }
}

fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry
        .get(name)
        .and_then(|values| values.first())
        .map(String::as_str)
}

/// Whether this process may make a mount namespace (root with
/// CAP_SYS_ADMIN, as on CI): the journal test needs one.
async fn can_mount_privately() -> bool {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "tmpfs",
            "/run",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success())
}

#[tokio::test]
async fn journal_entries_carry_channel_and_profile_as_fields() {
    if !can_mount_privately().await {
        eprintln!("skipped: needs a private mount namespace (root with CAP_SYS_ADMIN)");
        return;
    }
    within(Duration::from_secs(90), async {
        let mut journal = Journal::bind();
        let server_notify = Notifications::bind();
        let server_state = tempfile::tempdir().unwrap();
        let env = Env {
            journal_dir: Some(journal.dir.path().to_path_buf()),
            ..Env::default()
        };
        let mut server = Daemon::server(
            server_state.path(),
            &server_notify.path,
            &["--log-format", "journald"],
            env,
        );
        server_notify.until("READY=1").await;
        let listening = journal
            .find(|entry| field(entry, "MESSAGE") == Some("listening"))
            .await;
        assert_eq!(field(&listening, "SYSLOG_IDENTIFIER"), Some("wow-server"));
        assert_eq!(field(&listening, "PRIORITY"), Some("5"));
        let address = field(&listening, "WOW_ADDRESS").unwrap().to_owned();
        assert!(server.stderr().is_empty(), "{}", server.stderr());

        // The client under journald too: its tunnel span names the profile.
        let client_notify = Notifications::bind();
        let client_state = tempfile::tempdir().unwrap();
        let env = Env {
            journal_dir: Some(journal.dir.path().to_path_buf()),
            ..Env::default()
        };
        let mut client = Daemon::client(
            &format!("http://{address}"),
            client_state.path(),
            &client_notify.path,
            &["--log-format", "journald"],
            env,
        );
        let attached = journal
            .find(|entry| {
                field(entry, "SYSLOG_IDENTIFIER") == Some("wow-client")
                    && field(entry, "MESSAGE") == Some("attached")
            })
            .await;
        assert_eq!(field(&attached, "WOW_PROFILE"), Some("default"));
        let channel = field(&attached, "WOW_CHANNEL").unwrap().to_owned();
        assert_eq!(channel.len(), 36, "a UUID: {channel}");

        let server_side = journal
            .find(|entry| field(entry, "MESSAGE") == Some("client attached"))
            .await;
        assert_eq!(field(&server_side, "WOW_CHANNEL"), Some(channel.as_str()));
        assert_eq!(field(&server_side, "SYSLOG_IDENTIFIER"), Some("wow-server"));

        client.terminate().await;
        assert_eq!(
            client.exit_status().await.code(),
            Some(0),
            "{}",
            client.stderr()
        );
        server.terminate().await;
        assert_eq!(
            server.exit_status().await.code(),
            Some(0),
            "{}",
            server.stderr()
        );
    })
    .await;
}

#[tokio::test]
async fn a_sighup_reload_says_reloading_then_ready_for_both_daemons() {
    within(Duration::from_secs(90), async {
        let notify = Notifications::bind();
        let state = tempfile::tempdir().unwrap();
        let mut server = Daemon::server(state.path(), &notify.path, &[], Env::default());
        notify.until("READY=1").await;
        let address = server.listening_address().await;

        server.hangup().await;
        let messages = notify.until("READY=1").await;
        let reloading = messages
            .iter()
            .position(|message| message.lines().any(|line| line == "RELOADING=1"))
            .expect("RELOADING=1 before READY=1");
        assert!(
            messages[reloading]
                .lines()
                .any(|line| line.starts_with("MONOTONIC_USEC=")),
            "{messages:?}"
        );
        server.stderr_line("reload").await;

        let client_notify = Notifications::bind();
        let client_state = tempfile::tempdir().unwrap();
        let mut client = Daemon::client(
            &format!("http://{address}"),
            client_state.path(),
            &client_notify.path,
            &[],
            Env::default(),
        );
        client_notify.until("READY=1").await;
        client.hangup().await;
        let messages = client_notify.until("READY=1").await;
        assert!(
            messages
                .iter()
                .any(|message| message.lines().any(|line| line == "RELOADING=1")),
            "{messages:?}"
        );

        client.terminate().await;
        assert_eq!(
            client.exit_status().await.code(),
            Some(0),
            "{}",
            client.stderr()
        );
        server.terminate().await;
        assert_eq!(
            server.exit_status().await.code(),
            Some(0),
            "{}",
            server.stderr()
        );
    })
    .await;
}
