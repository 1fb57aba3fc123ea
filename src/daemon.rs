//! Running as a daemon: logging set-up and signals.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

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

/// Builds the log filter for `level`: our crate at `level`, chatty
/// dependencies one step quieter unless `trace` was asked for.
pub fn log_filter(level: LogLevel) -> EnvFilter {
    let mut directives = level.as_str().to_owned();
    if level < LogLevel::Trace {
        for target in QUIET_TARGETS {
            directives.push_str(&format!(",{target}=warn"));
        }
    }
    EnvFilter::new(directives)
}

/// Sends logs to stderr in the chosen format.
///
/// # Errors
///
/// When a global subscriber is already installed.
pub fn init_logging(level: LogLevel, format: LogFormat) -> anyhow::Result<()> {
    let filter = log_filter(level);
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
    Ok(())
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
