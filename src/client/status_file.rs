//! `status.json` in the client's state dir: what `wow-client status` reads.
//! A running client rewrites it (atomically) on every change of its
//! [`StatusBoard`] and removes it when it stops.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::status::{ProfileStatus, StatusBoard, TunnelState};
use crate::files;

/// The status file's name inside the state dir.
pub const STATUS_FILE: &str = "status.json";

/// What the status file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    /// The process that writes it.
    pub pid: u32,
    /// Every profile it runs, by name.
    pub profiles: BTreeMap<String, ProfileStatus>,
}

/// The status file of the state dir `state_dir`.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Keeps the status file current until `stop`, then removes it.
pub async fn keep_status_file(board: StatusBoard, state_dir: PathBuf, stop: CancellationToken) {
    let path = status_path(&state_dir);
    let mut changes = board.subscribe();
    let mut warned = false;
    loop {
        let status = StatusFile {
            pid: std::process::id(),
            profiles: board.snapshot(),
        };
        if let Err(error) = write(&state_dir, &path, &status)
            && !warned
        {
            warn!(error = format!("{error:#}"), "cannot write the status file");
            warned = true;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            () = stop.cancelled() => break,
        }
    }
    if let Err(error) = std::fs::remove_file(&path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(error = %error, path = %path.display(), "cannot remove the status file");
    }
}

fn write(state_dir: &Path, path: &Path, status: &StatusFile) -> anyhow::Result<()> {
    files::ensure_private_dir(state_dir)?;
    let text = serde_json::to_vec_pretty(status).context("cannot encode the status")?;
    files::write_private(path, &text)
}

/// Reads the status of the client running on `state_dir`.
///
/// # Errors
///
/// One line for the user when no client runs there (no file, or the file
/// of a process that is gone) or the file cannot be read.
pub fn read_status(state_dir: &Path) -> anyhow::Result<StatusFile> {
    let path = status_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no wow-client is running with state dir {} (no {STATUS_FILE}); start one, or pass the --state-dir it uses",
            state_dir.display()
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    let status: StatusFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged: delete it and restart wow-client",
            path.display()
        )
    })?;
    if !Path::new(&format!("/proc/{}", status.pid)).exists() {
        anyhow::bail!(
            "no wow-client is running with state dir {} (process {} that wrote {STATUS_FILE} is gone)",
            state_dir.display(),
            status.pid
        );
    }
    Ok(status)
}

/// One line per profile: name, state, webhook URL and target.
pub fn render_status(status: &StatusFile) -> String {
    if status.profiles.is_empty() {
        return format!("wow-client (pid {}) runs no profile\n", status.pid);
    }
    let mut out = String::new();
    for (name, profile) in &status.profiles {
        let state = match &profile.state {
            TunnelState::Starting => "starting".to_owned(),
            TunnelState::Attached => "attached".to_owned(),
            TunnelState::Reconnecting { attempt } => format!("reconnecting (attempt {attempt})"),
            TunnelState::Refused { reason } => format!("refused: {reason}"),
        };
        let url = profile
            .webhook_url
            .as_deref()
            .unwrap_or("(no webhook URL yet)");
        let _infallible = writeln!(out, "{name:<8} {url} -> {}  {state}", profile.target);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_of_this_process_reads_back_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        let mut profiles = BTreeMap::new();
        profiles.insert(
            "stripe".to_owned(),
            ProfileStatus {
                state: TunnelState::Attached,
                server_url: "http://relay".into(),
                webhook_url: Some("http://relay/webhook/1".into()),
                target: "http://localhost:4242".into(),
            },
        );
        let status = StatusFile {
            pid: std::process::id(),
            profiles,
        };
        write(dir.path(), &status_path(dir.path()), &status).unwrap();
        let read = read_status(dir.path()).unwrap();
        assert_eq!(read, status);
        assert_eq!(
            render_status(&read),
            "stripe   http://relay/webhook/1 -> http://localhost:4242  attached\n"
        );
        std::fs::remove_file(status_path(dir.path())).unwrap();
        let error = read_status(dir.path()).unwrap_err().to_string();
        assert!(error.contains("no wow-client is running"), "{error}");
    }
}
