//! What each tunnel is doing right now: read by `STATUS=` for systemd and
//! by `wow-client status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The state of one profile's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TunnelState {
    /// Getting its channel or attaching for the first time.
    Starting,
    /// Attached: webhooks flow.
    Attached,
    /// Lost or not yet reached; retrying.
    Reconnecting {
        /// Failed attempts in a row.
        attempt: u32,
    },
    /// The server refused the channel for good.
    Refused {
        /// What the user must do.
        reason: String,
    },
}

/// One profile as `wow-client status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileStatus {
    /// The tunnel's state.
    #[serde(flatten)]
    pub state: TunnelState,
    /// The relay.
    pub server_url: String,
    /// The profile's webhook URL, once known.
    pub webhook_url: Option<String>,
    /// Where its requests go.
    pub target: String,
}

/// The state of every tunnel of a running client, shared by all of them.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    profiles: Arc<Mutex<BTreeMap<String, ProfileStatus>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard::new()
    }
}

impl StatusBoard {
    /// An empty board.
    pub fn new() -> Self {
        StatusBoard {
            profiles: Arc::new(Mutex::new(BTreeMap::new())),
            changed: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Sets a profile's entry (creating it) and tells subscribers.
    pub fn set(&self, profile: &str, status: ProfileStatus) {
        if let Ok(mut profiles) = self.profiles.lock() {
            profiles.insert(profile.to_owned(), status);
        }
        self.changed.send_modify(|version| *version += 1);
    }

    /// Changes a profile's state, if it has an entry.
    pub fn update(&self, profile: &str, change: impl FnOnce(&mut ProfileStatus)) {
        if let Ok(mut profiles) = self.profiles.lock()
            && let Some(status) = profiles.get_mut(profile)
        {
            change(status);
        }
        self.changed.send_modify(|version| *version += 1);
    }

    /// Removes a profile (it was stopped or removed from the configuration).
    pub fn remove(&self, profile: &str) {
        if let Ok(mut profiles) = self.profiles.lock() {
            profiles.remove(profile);
        }
        self.changed.send_modify(|version| *version += 1);
    }

    /// Every profile and its status, by name.
    pub fn snapshot(&self) -> BTreeMap<String, ProfileStatus> {
        self.profiles
            .lock()
            .map(|profiles| profiles.clone())
            .unwrap_or_default()
    }

    /// One line: `stripe: attached, github: reconnecting`.
    pub fn summary(&self) -> String {
        let profiles = self.snapshot();
        if profiles.is_empty() {
            return "no profiles".to_owned();
        }
        profiles
            .iter()
            .map(|(name, status)| {
                let state = match &status.state {
                    TunnelState::Starting => "starting",
                    TunnelState::Attached => "attached",
                    TunnelState::Reconnecting { .. } => "reconnecting",
                    TunnelState::Refused { .. } => "refused",
                };
                format!("{name}: {state}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Resolves on every change; for writers of status files and `STATUS=`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TunnelState) -> ProfileStatus {
        ProfileStatus {
            state,
            server_url: "https://relay".into(),
            webhook_url: None,
            target: "http://localhost:3000".into(),
        }
    }

    #[test]
    fn the_summary_names_every_profile_and_its_state() {
        let board = StatusBoard::new();
        let changes = board.subscribe();
        board.set("stripe", status(TunnelState::Attached));
        board.set("github", status(TunnelState::Starting));
        board.update("github", |s| {
            s.state = TunnelState::Reconnecting { attempt: 2 }
        });
        assert!(changes.has_changed().unwrap());
        assert_eq!(board.summary(), "github: reconnecting, stripe: attached");
        board.remove("github");
        assert_eq!(board.summary(), "stripe: attached");
    }
}
