//! The channel registry: which channels exist and which client holds each.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use uuid::Uuid;

use super::session::Session;

/// Every channel this server knows, and the session attached to each.
#[derive(Debug)]
pub struct Registry {
    channels: RwLock<HashMap<Uuid, Channel>>,
    max_channels: usize,
}

/// One channel: a webhook URL and, while a client holds it, its session.
#[derive(Debug, Clone)]
pub struct Channel {
    /// When the channel was issued.
    pub created_at: SystemTime,
    /// When a client last attached; `None` if none ever did.
    pub last_attached: Option<SystemTime>,
    /// The attached client, if any.
    pub session: Option<Arc<Session>>,
}

/// Where a webhook for a channel can go.
#[derive(Debug)]
pub enum Lookup {
    /// No such channel.
    Unknown,
    /// The channel exists; no client holds it.
    Offline,
    /// A client holds the channel.
    Attached(Arc<Session>),
}

/// The registry already holds `max_channels` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server holds its maximum of {0} channels")]
pub struct RegistryFull(pub usize);

impl Registry {
    /// An empty registry that holds at most `max_channels` channels.
    pub fn new(max_channels: usize) -> Self {
        Registry {
            channels: RwLock::new(HashMap::new()),
            max_channels,
        }
    }

    /// Issues a new channel.
    ///
    /// # Errors
    ///
    /// [`RegistryFull`] when the registry is at its limit.
    pub fn create(&self) -> Result<Uuid, RegistryFull> {
        let mut channels = self.write();
        if channels.len() >= self.max_channels {
            return Err(RegistryFull(self.max_channels));
        }
        let id = Uuid::new_v4();
        channels.insert(
            id,
            Channel {
                created_at: SystemTime::now(),
                last_attached: None,
                session: None,
            },
        );
        Ok(id)
    }

    /// Whether the channel exists.
    pub fn contains(&self, id: Uuid) -> bool {
        self.read().contains_key(&id)
    }

    /// Where a webhook for `id` goes.
    pub fn lookup(&self, id: Uuid) -> Lookup {
        match self.read().get(&id) {
            None => Lookup::Unknown,
            Some(Channel {
                session: Some(session),
                ..
            }) => Lookup::Attached(session.clone()),
            Some(_) => Lookup::Offline,
        }
    }

    /// Attaches a session to its channel, registering the channel if this
    /// server does not know it (its token proved it was issued).
    ///
    /// # Errors
    ///
    /// The session that already holds the channel.
    pub fn attach(&self, session: &Arc<Session>) -> Result<(), Arc<Session>> {
        let mut channels = self.write();
        let channel = channels
            .entry(session.channel())
            .or_insert_with(|| Channel {
                created_at: SystemTime::now(),
                last_attached: None,
                session: None,
            });
        if let Some(holder) = &channel.session {
            return Err(holder.clone());
        }
        channel.session = Some(session.clone());
        channel.last_attached = Some(SystemTime::now());
        Ok(())
    }

    /// Detaches `session` if it still holds its channel (a newer session
    /// may have replaced it).
    pub fn detach(&self, session: &Arc<Session>) {
        let mut channels = self.write();
        if let Some(channel) = channels.get_mut(&session.channel())
            && channel
                .session
                .as_ref()
                .is_some_and(|holder| Arc::ptr_eq(holder, session))
        {
            channel.session = None;
            channel.last_attached = Some(SystemTime::now());
        }
    }

    /// Every attached session.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.read()
            .values()
            .filter_map(|channel| channel.session.clone())
            .collect()
    }

    /// How many channels exist and how many are attached.
    pub fn counts(&self) -> (usize, usize) {
        let channels = self.read();
        let attached = channels.values().filter(|c| c.session.is_some()).count();
        (channels.len(), attached)
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
