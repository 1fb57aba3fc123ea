//! Sign-ins in progress: a small in-memory map whose entries expire, so a
//! stream of abandoned sign-ins can neither grow it nor outlive its limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use oauth2::CsrfToken;

/// Bytes of randomness in a generated key (base64url, 43 characters).
const KEY_BYTES: u32 = 32;

/// The map is full of live entries; the caller answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sign-ins in progress")]
pub struct Full;

/// Entries keyed by an unguessable random string, each with a deadline.
#[derive(Debug)]
pub struct Expiring<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
    capacity: usize,
}

impl<V> Expiring<V> {
    /// An empty map holding at most `capacity` live entries.
    pub fn new(capacity: usize) -> Self {
        Expiring {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Stores `value` until `deadline` under a new random key.
    ///
    /// # Errors
    ///
    /// [`Full`] when `capacity` live entries are already stored.
    pub fn insert(&self, value: V, deadline: Instant) -> Result<String, Full> {
        let key = CsrfToken::new_random_len(KEY_BYTES).into_secret();
        self.insert_at(key.clone(), value, deadline)?;
        Ok(key)
    }

    /// Stores `value` under `key` (a key made elsewhere, such as an OAuth
    /// `state`) until `deadline`.
    ///
    /// # Errors
    ///
    /// [`Full`] when `capacity` live entries are already stored.
    pub fn insert_at(&self, key: String, value: V, deadline: Instant) -> Result<(), Full> {
        let mut entries = self.lock();
        let now = Instant::now();
        if entries.len() >= self.capacity {
            entries.retain(|_, (until, _)| *until > now);
        }
        if entries.len() >= self.capacity {
            return Err(Full);
        }
        entries.insert(key, (deadline, value));
        Ok(())
    }

    /// Removes and returns the live entry under `key`.
    pub fn take(&self, key: &str) -> Option<V> {
        let (deadline, value) = self.lock().remove(key)?;
        (deadline > Instant::now()).then_some(value)
    }

    /// A clone of the live entry under `key`, left in place.
    pub fn get(&self, key: &str) -> Option<V>
    where
        V: Clone,
    {
        let entries = self.lock();
        let (deadline, value) = entries.get(key)?;
        (*deadline > Instant::now()).then(|| value.clone())
    }

    /// Forgets the entry under `key`.
    pub fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Live and expired entries not yet swept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, V)>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_are_taken_once_and_expire() {
        let store = Expiring::new(2);
        let later = Instant::now() + Duration::from_secs(60);
        let key = store.insert("a", later).unwrap();
        assert_eq!(key.len(), 43);
        assert_eq!(store.get(&key), Some("a"));
        assert_eq!(store.take(&key), Some("a"));
        assert_eq!(store.take(&key), None);

        let past = Instant::now() - Duration::from_secs(1);
        let stale = store.insert("b", past).unwrap();
        assert_eq!(store.get(&stale), None);
        assert_eq!(store.take(&stale), None);
    }

    #[test]
    fn a_full_store_refuses_until_entries_expire() {
        let store = Expiring::new(2);
        let later = Instant::now() + Duration::from_secs(60);
        let past = Instant::now() - Duration::from_secs(1);
        store.insert(1, later).unwrap();
        store.insert(2, past).unwrap();
        // The expired entry makes room.
        store.insert(3, later).unwrap();
        assert_eq!(store.insert(4, later), Err(Full));
        assert_eq!(store.len(), 2);
    }
}
