//! The client's state dir: the channel each profile holds on each server,
//! so a restart reattaches to the same webhook URL, and the session token
//! `wow-client login` stored for each server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Secret;
use crate::files;

/// A channel a profile holds on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The channel id.
    pub channel_id: Uuid,
    /// The channel token that attaches to it.
    pub token: Secret,
    /// The URL senders call.
    pub webhook_url: String,
}

/// The on-disk form of a [`ChannelRecord`], with the key it was stored under.
#[derive(Debug, Serialize, Deserialize)]
struct StoredChannel {
    server_url: String,
    profile: String,
    channel_id: Uuid,
    token: String,
    webhook_url: String,
}

/// The on-disk form of a session token, with the server it is for.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSession {
    server_url: String,
    token: String,
}

/// The client's state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state dir at `root`; nothing is created until something is saved.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The channel `profile` holds on `server_url`, if one was saved.
    ///
    /// # Errors
    ///
    /// When the file exists but cannot be read or parsed.
    pub fn load_channel(
        &self,
        profile: &str,
        server_url: &str,
    ) -> anyhow::Result<Option<ChannelRecord>> {
        let path = self.channel_path(profile, server_url);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let stored: StoredChannel = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged: delete it (or run with --reset-channel) to get a new webhook URL",
                path.display()
            )
        })?;
        if stored.server_url != server_url || stored.profile != profile {
            return Ok(None);
        }
        Ok(Some(ChannelRecord {
            channel_id: stored.channel_id,
            token: Secret::new(stored.token),
            webhook_url: stored.webhook_url,
        }))
    }

    /// Saves the channel `profile` holds on `server_url` (file mode 0600).
    ///
    /// # Errors
    ///
    /// When the state dir or the file cannot be written.
    pub fn save_channel(
        &self,
        profile: &str,
        server_url: &str,
        record: &ChannelRecord,
    ) -> anyhow::Result<()> {
        let stored = StoredChannel {
            server_url: server_url.to_owned(),
            profile: profile.to_owned(),
            channel_id: record.channel_id,
            token: record.token.expose().to_owned(),
            webhook_url: record.webhook_url.clone(),
        };
        let path = self.channel_path(profile, server_url);
        if let Some(parent) = path.parent() {
            files::ensure_private_dir(&self.root)?;
            files::ensure_private_dir(parent)?;
        }
        let text = serde_json::to_vec_pretty(&stored).context("cannot encode channel state")?;
        files::write_private(&path, &text)
    }

    /// Forgets the channel, so the next start asks for a new URL.
    ///
    /// # Errors
    ///
    /// When the file exists but cannot be removed.
    pub fn forget_channel(&self, profile: &str, server_url: &str) -> anyhow::Result<()> {
        let path = self.channel_path(profile, server_url);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// The session token stored for `server_url` by `wow-client login`.
    ///
    /// # Errors
    ///
    /// When the file exists but cannot be read or parsed.
    pub fn load_session(&self, server_url: &str) -> anyhow::Result<Option<Secret>> {
        let path = self.session_path(server_url);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let stored: StoredSession = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged: delete it and run `wow-client login`",
                path.display()
            )
        })?;
        if stored.server_url.trim_end_matches('/') != server_url.trim_end_matches('/') {
            return Ok(None);
        }
        Ok(Some(Secret::new(stored.token)))
    }

    /// Stores the session token for `server_url` (file mode 0600) and
    /// returns where.
    ///
    /// # Errors
    ///
    /// When the state dir or the file cannot be written.
    pub fn save_session(&self, server_url: &str, token: &Secret) -> anyhow::Result<PathBuf> {
        let stored = StoredSession {
            server_url: server_url.trim_end_matches('/').to_owned(),
            token: token.expose().to_owned(),
        };
        let path = self.session_path(server_url);
        files::ensure_private_dir(&self.root)?;
        if let Some(parent) = path.parent() {
            files::ensure_private_dir(parent)?;
        }
        let text = serde_json::to_vec_pretty(&stored).context("cannot encode the session")?;
        files::write_private(&path, &text)?;
        Ok(path)
    }

    fn session_path(&self, server_url: &str) -> PathBuf {
        self.root
            .join("sessions")
            .join(format!("{}.json", file_safe(server_url)))
    }

    fn channel_path(&self, profile: &str, server_url: &str) -> PathBuf {
        self.root.join("channels").join(format!(
            "{}@{}.json",
            file_safe(profile),
            file_safe(server_url)
        ))
    }
}

/// A file-name-safe spelling: letters, digits, `-` and `.` kept, the rest `_`.
fn file_safe(text: &str) -> String {
    let text = text
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record() -> ChannelRecord {
        ChannelRecord {
            channel_id: Uuid::new_v4(),
            token: Secret::new("token-value"),
            webhook_url: "https://hooks.example.com/webhook/x".into(),
        }
    }

    #[test]
    fn channels_are_kept_per_profile_and_server() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let stripe = record();
        let github = record();
        state
            .save_channel("stripe", "https://a.example", &stripe)
            .unwrap();
        state
            .save_channel("github", "https://a.example", &github)
            .unwrap();
        assert_eq!(
            state.load_channel("stripe", "https://a.example").unwrap(),
            Some(stripe)
        );
        assert_eq!(
            state.load_channel("github", "https://a.example").unwrap(),
            Some(github)
        );
        assert_eq!(
            state.load_channel("stripe", "https://b.example").unwrap(),
            None
        );

        state.forget_channel("stripe", "https://a.example").unwrap();
        assert_eq!(
            state.load_channel("stripe", "https://a.example").unwrap(),
            None
        );

        let mode = std::fs::metadata(dir.path().join("state/channels"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn sessions_are_kept_per_server_in_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert_eq!(state.load_session("https://a.example").unwrap(), None);
        let path = state
            .save_session("https://a.example/", &Secret::new("session-a"))
            .unwrap();
        assert_eq!(
            state.load_session("https://a.example").unwrap(),
            Some(Secret::new("session-a"))
        );
        assert_eq!(state.load_session("https://b.example").unwrap(), None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.save_channel("p", "http://s", &record()).unwrap();
        let path = state.channel_path("p", "http://s");
        std::fs::write(&path, "{not json").unwrap();
        let error = format!("{:#}", state.load_channel("p", "http://s").unwrap_err());
        assert!(error.contains("--reset-channel"), "{error}");
    }
}
