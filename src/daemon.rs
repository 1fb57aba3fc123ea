//! Running as a daemon: logging set-up (text, JSON or the systemd journal),
//! signals, and what the daemons tell systemd (sd_notify).

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::warn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::{LogFormat, LogLevel};

/// Dependencies whose own logs say little to an operator at `info`.
const QUIET_TARGETS: [&str; 8] = [
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tungstenite",
    "tokio_tungstenite",
    "memberlist_core",
    "memberlist_net",
];

/// Prefix of our own fields in journal entries, so that an event field can
/// never collide with one journald defines (`PRIORITY`, `TARGET`, …):
/// `channel` becomes `WOW_CHANNEL`, `profile` `WOW_PROFILE`, `stream`
/// `WOW_STREAM`. The message stays `MESSAGE`.
pub const JOURNAL_FIELD_PREFIX: &str = "WOW";

/// Where journald takes native entries (fixed by systemd, not configurable).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Dependency targets whose trace events hold secrets, kept at `debug` even
/// at `trace`: tungstenite writes the handshake request (the channel token
/// in `Authorization`) and every frame it sends or receives, which carry
/// the senders' headers (their tokens and signatures) and bodies.
const SECRET_TARGETS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Builds the log filter for `level`: our crate at `level`, chatty
/// dependencies one step quieter unless `trace` was asked for, and targets
/// that would log secrets never at `trace`.
pub fn log_filter(level: LogLevel) -> EnvFilter {
    let mut directives = level.as_str().to_owned();
    if level < LogLevel::Trace {
        for target in QUIET_TARGETS {
            directives.push_str(&format!(",{target}=warn"));
        }
    } else {
        for target in SECRET_TARGETS {
            directives.push_str(&format!(",{target}=debug"));
        }
    }
    EnvFilter::new(directives)
}

/// The format to log in. `configured` stands when the user chose it
/// (`chosen`: the `--log-format` flag, or `WOW_LOG_FORMAT` in the
/// environment); otherwise the built-in `text` becomes `journald` when
/// stderr is the journal, as under systemd (SPEC §1).
pub fn resolve_log_format(configured: LogFormat, chosen: bool) -> LogFormat {
    let chosen = chosen || std::env::var_os("WOW_LOG_FORMAT").is_some();
    pick_log_format(configured, chosen, stderr_is_journal())
}

fn pick_log_format(configured: LogFormat, chosen: bool, stderr_is_journal: bool) -> LogFormat {
    if !chosen && configured == LogFormat::Text && stderr_is_journal {
        LogFormat::Journald
    } else {
        configured
    }
}

/// Whether stderr is connected to the journal: systemd then sets
/// `JOURNAL_STREAM` to the `device:inode` of that stream. A child that
/// inherited the variable but not the stream (stderr redirected) sees
/// another inode, so the variable alone is not enough.
pub fn stderr_is_journal() -> bool {
    let Some((device, inode)) = std::env::var_os("JOURNAL_STREAM")
        .as_deref()
        .and_then(parse_journal_stream)
    else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(stderr)
        .metadata()
        .is_ok_and(|metadata| metadata.dev() == device && metadata.ino() == inode)
}

/// `JOURNAL_STREAM` is `<st_dev>:<st_ino>`, both in decimal.
fn parse_journal_stream(value: &OsStr) -> Option<(u64, u64)> {
    let (device, inode) = value.to_str()?.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

/// Changes the level of the installed logger while the daemon runs (a
/// reload that changes `log_level`).
#[derive(Debug, Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl LogHandle {
    /// Logs at `level` from now on.
    ///
    /// # Errors
    ///
    /// When the logger is gone.
    pub fn set_level(&self, level: LogLevel) -> anyhow::Result<()> {
        Ok(self.0.reload(log_filter(level))?)
    }
}

/// Sends logs to stderr in the chosen format, or to the journal for
/// `journald`. Without a journal socket (a container, CI, a terminal) the
/// `journald` format falls back to text on stderr and says so there. The
/// returned handle changes the level later.
///
/// # Errors
///
/// When a global subscriber is already installed.
pub fn init_logging(level: LogLevel, format: LogFormat) -> anyhow::Result<LogHandle> {
    let (filter, handle) = reload::Layer::new(log_filter(level));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()?,
        LogFormat::Text => registry.with(text_layer()).try_init()?,
        LogFormat::Journald => match journald_layer() {
            Ok(journald) => registry.with(journald).try_init()?,
            Err(error) => {
                registry.with(text_layer()).try_init()?;
                warn!(
                    socket = JOURNAL_SOCKET,
                    error = %error,
                    "cannot reach journald: logging text to stderr instead"
                );
            }
        },
    }
    Ok(LogHandle(handle))
}

fn text_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
}

/// Native journal entries: every field of the event and of its spans
/// becomes a journal field (see [`JOURNAL_FIELD_PREFIX`]), the level a
/// `PRIORITY`, the binary's name the `SYSLOG_IDENTIFIER`.
fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?.with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_owned())))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// # Errors
///
/// When the signal handlers cannot be installed.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Tells systemd about the daemon's state (sd_notify). Every function is a
/// no-op when the process was not started by systemd (no `NOTIFY_SOCKET`),
/// and the `spawn_*` helpers then start no task at all.
pub mod systemd {
    use std::time::Duration;

    use sd_notify::NotifyState;
    use tokio::sync::watch;
    use tokio::time::MissedTickBehavior;
    use tokio_util::task::AbortOnDropHandle;
    use tracing::debug;

    fn send(states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            debug!(error = %error, "sd_notify failed");
        }
    }

    /// Whether a service manager listens for our notifications.
    pub fn is_supervised() -> bool {
        std::env::var_os("NOTIFY_SOCKET").is_some_and(|socket| !socket.is_empty())
    }

    /// `READY=1`: serving (the client: configuration valid).
    pub fn ready() {
        send(&[NotifyState::Ready]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, before a reload; follow with [`ready`].
    pub fn reloading() {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping() {
        send(&[NotifyState::Stopping]);
    }

    /// `STATUS=…`: a one-line summary shown by `systemctl status`.
    pub fn status(text: &str) {
        send(&[NotifyState::Status(text)]);
    }

    /// `WATCHDOG=1`: the runtime is responsive.
    pub fn watchdog() {
        send(&[NotifyState::Watchdog]);
    }

    /// How often to send [`watchdog`]: half of `WATCHDOG_USEC`, when systemd
    /// asked this process for watchdog pings (`WATCHDOG_PID`, when set, must
    /// be our pid: the variable may have been inherited from a parent).
    pub fn watchdog_interval() -> Option<Duration> {
        sd_notify::watchdog_enabled()
            .map(|timeout| timeout / 2)
            .filter(|interval| !interval.is_zero())
    }

    /// Sends [`watchdog`] every [`watchdog_interval`] from a task on the
    /// current runtime, until the handle is dropped.
    ///
    /// The ping is the proof of life: it only goes out while the runtime
    /// still schedules tasks and fires timers, so a runtime whose workers
    /// are all stuck misses it and systemd restarts the daemon.
    pub fn spawn_watchdog() -> Option<AbortOnDropHandle<()>> {
        let interval = watchdog_interval().filter(|_| is_supervised())?;
        debug!(?interval, "sending watchdog pings");
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                watchdog();
            }
        })))
    }

    /// Keeps `STATUS=` current: sends `describe()` after every change
    /// announced on `changes` (one not yet seen on that receiver included),
    /// until the handle is dropped. Subscribe before the state first
    /// changes, so that no change is missed.
    pub fn spawn_status_watch(
        mut changes: watch::Receiver<u64>,
        describe: impl Fn() -> String + Send + 'static,
    ) -> Option<AbortOnDropHandle<()>> {
        if !is_supervised() {
            return None;
        }
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut last = String::new();
            while changes.changed().await.is_ok() {
                changes.borrow_and_update();
                send_if_changed(&mut last, describe());
            }
        })))
    }

    /// Keeps `STATUS=` current for state that announces no changes: looks
    /// at `describe()` every `period` and sends it when the text changed,
    /// until the handle is dropped.
    pub fn spawn_status_poll(
        period: Duration,
        describe: impl Fn() -> String + Send + 'static,
    ) -> Option<AbortOnDropHandle<()>> {
        if !is_supervised() {
            return None;
        }
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last = String::new();
            loop {
                ticks.tick().await;
                send_if_changed(&mut last, describe());
            }
        })))
    }

    fn send_if_changed(last: &mut String, text: String) {
        if *last != text {
            status(&text);
            *last = text;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_reads_device_and_inode() {
        let parse = |text: &str| parse_journal_stream(OsStr::new(text));
        assert_eq!(parse("2049:123456"), Some((2049, 123456)));
        assert_eq!(parse("0:0"), Some((0, 0)));
        assert_eq!(parse(""), None);
        assert_eq!(parse("2049"), None);
        assert_eq!(parse("a:1"), None);
        assert_eq!(parse("1:-2"), None);
    }

    #[test]
    fn journald_is_the_default_only_when_stderr_is_the_journal_and_nothing_was_chosen() {
        use LogFormat::{Journald, Json, Text};
        let table = [
            // configured, chosen, stderr is the journal, expected
            (Text, false, true, Journald),
            (Text, false, false, Text),
            (Text, true, true, Text),
            (Json, false, true, Json),
            (Json, true, false, Json),
            (Journald, false, false, Journald),
            (Journald, true, false, Journald),
        ];
        for (configured, chosen, journal, expected) in table {
            assert_eq!(
                pick_log_format(configured, chosen, journal),
                expected,
                "{configured} chosen={chosen} journal={journal}"
            );
        }
    }
}
