//! The channel registry: which channels exist, which client holds each, and
//! their record in the state dir.
//!
//! The registry lives in memory and is written to `channels.json` in the
//! state dir (atomically, at most once a second after a change, and on
//! shutdown), so a restart keeps every URL. A crash can lose the last second
//! of changes; a client whose channel was lost re-registers it with its
//! token, so no URL ever changes because of that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use super::session::Session;
use crate::config::OfflinePolicy;
use crate::files;

/// Name of the registry file in the state dir.
pub const CHANNELS_FILE: &str = "channels.json";

/// Changes are written at most this often.
const SAVE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Every channel this server knows, and the session attached to each.
#[derive(Debug)]
pub struct Registry {
    channels: RwLock<HashMap<Uuid, Channel>>,
    max_channels: usize,
    path: PathBuf,
    changed: Notify,
}

/// One channel: a webhook URL and, while a client holds it, its session.
#[derive(Debug, Clone)]
pub struct Channel {
    /// When the channel was issued.
    pub created_at: SystemTime,
    /// When a client last held it (attach or detach); `None` if none ever did.
    pub last_attached: Option<SystemTime>,
    /// What to do with webhooks while no client holds it; `None`: the server default.
    pub offline: Option<OfflinePolicy>,
    /// The attached client, if any.
    pub session: Option<Arc<Session>>,
}

/// Where a webhook for a channel can go.
#[derive(Debug)]
pub enum Lookup {
    /// No such channel.
    Unknown,
    /// The channel exists; no client holds it.
    Offline {
        /// The channel's own offline policy, if its client stated one.
        offline: Option<OfflinePolicy>,
    },
    /// A client holds the channel.
    Attached {
        /// The attached client.
        session: Arc<Session>,
        /// The channel's own offline policy, if its client stated one.
        offline: Option<OfflinePolicy>,
    },
}

/// The registry already holds `max_channels` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server holds its maximum of {0} channels")]
pub struct RegistryFull(pub usize);

/// The on-disk form of the registry.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    channels: Vec<SavedChannel>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedChannel {
    id: Uuid,
    /// Seconds since the Unix epoch.
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_attached: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offline: Option<String>,
}

impl Channel {
    fn new(now: SystemTime) -> Self {
        Channel {
            created_at: now,
            last_attached: None,
            offline: None,
            session: None,
        }
    }
}

impl Registry {
    /// Loads the registry saved in `state_dir`, or starts an empty one.
    ///
    /// # Errors
    ///
    /// When the saved file exists but cannot be read or understood; it is
    /// never silently discarded.
    pub fn load(state_dir: &Path, max_channels: usize) -> anyhow::Result<Self> {
        let path = state_dir.join(CHANNELS_FILE);
        let channels = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).with_context(|| {
                format!(
                    "{} is damaged: restore it from a backup, or move it away to start with no channels \
                     (clients re-register theirs with their tokens)",
                    path.display()
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        Ok(Registry {
            channels: RwLock::new(channels),
            max_channels,
            path,
            changed: Notify::new(),
        })
    }

    /// Issues a new channel.
    ///
    /// # Errors
    ///
    /// [`RegistryFull`] when the registry is at its limit.
    pub fn create(&self, offline: Option<OfflinePolicy>) -> Result<Uuid, RegistryFull> {
        let id = Uuid::new_v4();
        {
            let mut channels = self.write();
            if channels.len() >= self.max_channels {
                return Err(RegistryFull(self.max_channels));
            }
            let mut channel = Channel::new(SystemTime::now());
            channel.offline = offline;
            channels.insert(id, channel);
        }
        self.changed.notify_one();
        Ok(id)
    }

    /// Whether the channel exists.
    pub fn contains(&self, id: Uuid) -> bool {
        self.read().contains_key(&id)
    }

    /// A copy of the channel's record.
    pub fn get(&self, id: Uuid) -> Option<Channel> {
        self.read().get(&id).cloned()
    }

    /// Where a webhook for `id` goes.
    pub fn lookup(&self, id: Uuid) -> Lookup {
        match self.read().get(&id) {
            None => Lookup::Unknown,
            Some(Channel {
                session: Some(session),
                offline,
                ..
            }) => Lookup::Attached {
                session: session.clone(),
                offline: *offline,
            },
            Some(channel) => Lookup::Offline {
                offline: channel.offline,
            },
        }
    }

    /// Records the offline policy a channel's client asked for (`None`: the
    /// server's default).
    pub fn set_offline(&self, id: Uuid, offline: Option<OfflinePolicy>) {
        let changed = self
            .write()
            .get_mut(&id)
            .is_some_and(|channel| std::mem::replace(&mut channel.offline, offline) != offline);
        if changed {
            self.changed.notify_one();
        }
    }

    /// Attaches a session to its channel, registering the channel if this
    /// server does not know it (its token proved it was issued).
    ///
    /// # Errors
    ///
    /// The session that already holds the channel.
    pub fn attach(&self, session: &Arc<Session>) -> Result<(), Arc<Session>> {
        self.replace(None, session)
    }

    /// Attaches `session` if the channel is free or still held by
    /// `expected` (a stale connection being replaced).
    ///
    /// # Errors
    ///
    /// The session that holds the channel instead.
    pub fn replace(
        &self,
        expected: Option<&Arc<Session>>,
        session: &Arc<Session>,
    ) -> Result<(), Arc<Session>> {
        {
            let mut channels = self.write();
            let now = SystemTime::now();
            let channel = channels
                .entry(session.channel())
                .or_insert_with(|| Channel::new(now));
            if let Some(holder) = &channel.session {
                let replaceable = expected.is_some_and(|expected| Arc::ptr_eq(holder, expected));
                if !replaceable {
                    return Err(holder.clone());
                }
            }
            channel.session = Some(session.clone());
            channel.last_attached = Some(now);
        }
        self.changed.notify_one();
        Ok(())
    }

    /// Detaches `session` if it still holds its channel (a newer session
    /// may have replaced it).
    pub fn detach(&self, session: &Arc<Session>) {
        let mut channels = self.write();
        let Some(channel) = channels.get_mut(&session.channel()) else {
            return;
        };
        let holds = channel
            .session
            .as_ref()
            .is_some_and(|holder| Arc::ptr_eq(holder, session));
        if holds {
            channel.session = None;
            channel.last_attached = Some(SystemTime::now());
            drop(channels);
            self.changed.notify_one();
        }
    }

    /// Removes channels no client holds that were issued but never attached
    /// for `never_attached`, or not held for `idle`. Returns their ids.
    pub fn expire(&self, now: SystemTime, never_attached: Duration, idle: Duration) -> Vec<Uuid> {
        let mut expired = Vec::new();
        self.write().retain(|id, channel| {
            if channel.session.is_some() {
                return true;
            }
            let (since, limit) = match channel.last_attached {
                None => (channel.created_at, never_attached),
                Some(last) => (last, idle),
            };
            let keep = now.duration_since(since).map_or(true, |age| age < limit);
            if !keep {
                expired.push(*id);
            }
            keep
        });
        if !expired.is_empty() {
            self.changed.notify_one();
        }
        expired
    }

    /// Every attached session.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.read()
            .values()
            .filter_map(|channel| channel.session.clone())
            .collect()
    }

    /// The ids of every channel, and of those a client holds.
    pub fn ids(&self) -> (Vec<Uuid>, Vec<Uuid>) {
        let channels = self.read();
        let attached = channels
            .iter()
            .filter(|(_, channel)| channel.session.is_some())
            .map(|(id, _)| *id)
            .collect();
        (channels.keys().copied().collect(), attached)
    }

    /// How many channels exist and how many are attached.
    pub fn counts(&self) -> (usize, usize) {
        let channels = self.read();
        let attached = channels.values().filter(|c| c.session.is_some()).count();
        (channels.len(), attached)
    }

    /// Writes the registry to the state dir now.
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn save(&self) -> anyhow::Result<()> {
        let saved = {
            let channels = self.read();
            Saved {
                version: 1,
                channels: channels
                    .iter()
                    .map(|(id, channel)| SavedChannel {
                        id: *id,
                        created_at: unix_seconds(channel.created_at),
                        last_attached: channel.last_attached.map(unix_seconds),
                        offline: channel.offline.map(|policy| policy.as_str().to_owned()),
                    })
                    .collect(),
            }
        };
        let bytes = serde_json::to_vec(&saved).context("cannot encode the channel registry")?;
        files::write_private(&self.path, &bytes)
    }

    /// Saves after every change (debounced) until `stop`, then once more.
    pub async fn keep_saved(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = self.changed.notified() => {}
                () = stop.cancelled() => break,
            }
            tokio::select! {
                () = tokio::time::sleep(SAVE_DEBOUNCE) => {}
                () = stop.cancelled() => break,
            }
            self.save_logged();
        }
        self.save_logged();
    }

    fn save_logged(&self) {
        if let Err(error) = self.save() {
            tracing::error!(
                error = format!("{error:#}"),
                "cannot save the channel registry"
            );
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Uuid, Channel>> {
        // No code panics while holding the lock; keep serving if that changes.
        self.channels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Uuid, Channel>> {
        self.channels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn parse(bytes: &[u8]) -> anyhow::Result<HashMap<Uuid, Channel>> {
    let saved: Saved = serde_json::from_slice(bytes)?;
    anyhow::ensure!(
        saved.version == 1,
        "unknown registry version {}",
        saved.version
    );
    let mut channels = HashMap::with_capacity(saved.channels.len());
    for saved in saved.channels {
        let offline = match saved.offline {
            Some(text) => Some(text.parse().map_err(anyhow::Error::msg)?),
            None => None,
        };
        channels.insert(
            saved.id,
            Channel {
                created_at: from_unix_seconds(saved.created_at),
                last_attached: saved.last_attached.map(from_unix_seconds),
                offline,
                session: None,
            },
        );
    }
    Ok(channels)
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn from_unix_seconds(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Multiplexer, Side};

    fn session(channel: Uuid) -> Arc<Session> {
        let (mux, _frames) = Multiplexer::new(Side::Server, 4);
        Arc::new(Session::new(channel, None, mux))
    }

    #[test]
    fn channels_survive_a_restart_with_their_policy() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::load(dir.path(), 10).unwrap();
        let queued = registry.create(Some(OfflinePolicy::Queue)).unwrap();
        let plain = registry.create(None).unwrap();
        registry.attach(&session(plain)).unwrap();
        registry.save().unwrap();

        let reloaded = Registry::load(dir.path(), 10).unwrap();
        assert_eq!(reloaded.counts(), (2, 0));
        assert_eq!(
            reloaded.get(queued).unwrap().offline,
            Some(OfflinePolicy::Queue)
        );
        assert!(reloaded.get(plain).unwrap().last_attached.is_some());
    }

    #[test]
    fn a_damaged_file_stops_the_start_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHANNELS_FILE), b"{\"version\":1,\"chan").unwrap();
        let error = format!("{:#}", Registry::load(dir.path(), 10).unwrap_err());
        assert!(error.contains("channels.json is damaged"), "{error}");
        assert!(error.contains("move it away"), "{error}");
    }

    #[test]
    fn only_free_or_replaceable_channels_attach() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::load(dir.path(), 10).unwrap();
        let id = registry.create(None).unwrap();
        let first = session(id);
        let second = session(id);
        let third = session(id);
        registry.attach(&first).unwrap();
        assert!(registry.attach(&second).is_err());
        registry.replace(Some(&first), &second).unwrap();
        assert!(registry.replace(Some(&first), &third).is_err());
        registry.detach(&first);
        assert!(matches!(registry.lookup(id), Lookup::Attached { .. }));
        registry.detach(&second);
        assert!(matches!(
            registry.lookup(id),
            Lookup::Offline { offline: None }
        ));
        registry.set_offline(id, Some(OfflinePolicy::Reject));
        assert!(matches!(
            registry.lookup(id),
            Lookup::Offline {
                offline: Some(OfflinePolicy::Reject)
            }
        ));
    }

    #[test]
    fn unattached_channels_expire_after_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::load(dir.path(), 10).unwrap();
        let never = registry.create(None).unwrap();
        let idle = registry.create(None).unwrap();
        let held = registry.create(None).unwrap();
        let idle_session = session(idle);
        registry.attach(&idle_session).unwrap();
        registry.detach(&idle_session);
        registry.attach(&session(held)).unwrap();

        let minute = Duration::from_secs(60);
        let now = SystemTime::now();
        assert!(registry.expire(now, minute, 10 * minute).is_empty());
        assert_eq!(
            registry.expire(now + 2 * minute, minute, 10 * minute),
            [never]
        );
        assert_eq!(
            registry.expire(now + 11 * minute, minute, 10 * minute),
            [idle]
        );
        assert!(registry.contains(held));
    }

    #[test]
    fn the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::load(dir.path(), 1).unwrap();
        registry.create(None).unwrap();
        assert_eq!(registry.create(None), Err(RegistryFull(1)));
    }
}
