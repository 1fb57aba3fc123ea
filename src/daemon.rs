//! Running as a daemon: logging set-up and signals.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{LogFormat, LogLevel};

/// Dependencies whose own logs say little to an operator at `info`.
const QUIET_TARGETS: [&str; 6] = [
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tungstenite",
    "tokio_tungstenite",
];

/// Dependency targets whose trace events hold secrets, kept at `debug` even
/// at `trace`: tungstenite writes the whole handshake request, the channel
/// token in `Authorization` included.
const SECRET_TARGETS: [&str; 1] = ["tungstenite::handshake::client"];

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

/// Sends logs to stderr in the chosen format; the returned handle changes
/// the level later.
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
        LogFormat::Text | LogFormat::Journald => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init()?,
    }
    Ok(LogHandle(handle))
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
/// no-op when the process was not started by systemd (no `NOTIFY_SOCKET`).
pub mod systemd {
    use std::time::Duration;

    use sd_notify::NotifyState;
    use tracing::debug;

    fn send(states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            debug!(error = %error, "sd_notify failed");
        }
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
    /// asked for watchdog pings.
    pub fn watchdog_interval() -> Option<Duration> {
        sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
    }
}
