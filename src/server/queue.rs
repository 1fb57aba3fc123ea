//! The durable offline queue: webhooks for a channel whose client is away,
//! kept in arrival order until the app has answered them.
//!
//! Deliveries live in a redb database in the state dir (`queue.redb`): one
//! table of delivery records keyed by (channel, sequence), one of body
//! chunks keyed by (delivery id, chunk index). A body is first spooled to a
//! file as it arrives, so a slow sender never holds the database's single
//! writer, then copied in 256 KiB chunks inside the transaction that adds
//! the record; the commit is fsynced before the sender hears `202`.
//!
//! Sequence numbers are handed out when a webhook arrives, not when its
//! body has been stored, and a channel's first delivery is held back while
//! an earlier one is still being stored: order is arrival order.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::protocol::RequestHead;

/// Name of the queue database in the state dir.
pub const QUEUE_FILE: &str = "queue.redb";

/// Folder in the state dir where bodies wait while they arrive.
const SPOOL_DIR: &str = "queue-spool";

/// Bytes per stored body chunk (256 KiB).
const CHUNK_LEN: usize = 256 * 1024;

/// Memory redb may use for its page cache (16 MiB).
const CACHE_BYTES: usize = 16 << 20;

/// Format of a stored delivery record.
const RECORD_VERSION: u8 = 1;

/// (channel, sequence) → record.
const DELIVERIES: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("deliveries");

/// (delivery id, chunk index) → body bytes.
const BODIES: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("bodies");

/// A delivery waiting in the queue.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The channel it is for.
    pub channel: Uuid,
    /// Its place in the channel's order.
    pub seq: u64,
    /// The request, with its delivery id and arrival time.
    pub head: RequestHead,
    /// Body length in bytes.
    pub body_len: u64,
    chunks: u32,
}

/// Per-channel counters kept in memory.
#[derive(Debug, Default)]
struct ChannelQueue {
    /// Deliveries stored.
    count: u64,
    /// Bytes stored (bodies and heads).
    bytes: u64,
    /// Sequence numbers handed out whose delivery is still being stored.
    reserved: BTreeSet<u64>,
    /// Wakes the channel's redelivery when something was stored.
    wake: Arc<Notify>,
    /// Held while one of the channel's deliveries is out, so that a local
    /// redelivery and a hand-over to another replica take turns.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Why a webhook could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The channel's queue holds `queue_max` deliveries or `queue_max_bytes` bytes.
    #[error("the channel's queue is full")]
    Full,
    /// The body grew past `max_body`.
    #[error("request body larger than max_body")]
    TooLarge,
    /// The sender's connection failed mid-body.
    #[error("the sender's body failed: {0}")]
    Sender(String),
    /// Storing failed on our side.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// Limits a queue enforces per channel.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Deliveries per channel.
    pub max_count: u64,
    /// Bytes per channel.
    pub max_bytes: u64,
    /// Largest body.
    pub max_body: u64,
}

/// A place in a channel's order, taken when a webhook arrives.
#[derive(Debug)]
pub struct Reservation {
    channel: Uuid,
    seq: u64,
    queue: Arc<QueueInner>,
    stored: bool,
}

/// The queue of every channel.
#[derive(Debug, Clone)]
pub struct Queue {
    inner: Arc<QueueInner>,
}

#[derive(Debug)]
struct QueueInner {
    db: Database,
    spool: PathBuf,
    channels: Mutex<HashMap<Uuid, ChannelQueue>>,
    next_seq: AtomicU64,
    /// Wakes [`Queue::drained`] waiters when a delivery leaves the queue.
    removed: Notify,
}

impl Queue {
    /// Opens (or creates) the queue in `state_dir`.
    ///
    /// # Errors
    ///
    /// When the database cannot be opened or read: a damaged file is
    /// reported with its path and the fix, never silently replaced.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(QUEUE_FILE);
        let damaged = || {
            format!(
                "cannot open the queue database {}: if it is damaged, move it away to start with \
                 an empty queue (its deliveries are lost) or restore it from a backup",
                path.display()
            )
        };
        crate::files::ensure_private_file(&path)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .with_context(damaged)?;
        let spool = state_dir.join(SPOOL_DIR);
        crate::files::ensure_private_dir(&spool)?;
        clear_spool(&spool)?;

        let inner = QueueInner {
            db,
            spool,
            channels: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            removed: Notify::new(),
        };
        inner.load().with_context(damaged)?;
        Ok(Queue {
            inner: Arc::new(inner),
        })
    }

    /// Whether the channel has deliveries stored or being stored.
    pub fn has_pending(&self, channel: Uuid) -> bool {
        self.inner
            .lock()
            .get(&channel)
            .is_some_and(|queue| queue.count > 0 || !queue.reserved.is_empty())
    }

    /// How many deliveries and bytes the channel has queued.
    pub fn depth(&self, channel: Uuid) -> (u64, u64) {
        self.inner
            .lock()
            .get(&channel)
            .map_or((0, 0), |queue| (queue.count, queue.bytes))
    }

    /// Deliveries and bytes queued over all channels.
    pub fn totals(&self) -> (u64, u64) {
        self.inner
            .lock()
            .values()
            .fold((0, 0), |(count, bytes), queue| {
                (count + queue.count, bytes + queue.bytes)
            })
    }

    /// Resolves when something was stored for `channel`.
    pub fn waker(&self, channel: Uuid) -> Arc<Notify> {
        self.inner.lock().entry(channel).or_default().wake.clone()
    }

    /// The lock a delivery of `channel` holds from the moment it is read
    /// from the queue until it is removed (or given up for now): whoever
    /// sends the channel's queue, here or to another replica, takes turns.
    pub fn delivery_lock(&self, channel: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.lock().entry(channel).or_default().turn.clone()
    }

    /// Channels with deliveries stored.
    pub fn pending_channels(&self) -> Vec<Uuid> {
        self.inner
            .lock()
            .iter()
            .filter(|(_, queue)| queue.count > 0)
            .map(|(channel, _)| *channel)
            .collect()
    }

    /// Takes the next place in the channel's order, if the queue has room.
    ///
    /// # Errors
    ///
    /// [`EnqueueError::Full`] when the channel is at a limit.
    pub fn reserve(
        &self,
        channel: Uuid,
        limits: &QueueLimits,
    ) -> Result<Reservation, EnqueueError> {
        let mut channels = self.inner.lock();
        let queue = channels.entry(channel).or_default();
        let waiting = queue.count + queue.reserved.len() as u64;
        if waiting >= limits.max_count || queue.bytes >= limits.max_bytes {
            return Err(EnqueueError::Full);
        }
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        queue.reserved.insert(seq);
        Ok(Reservation {
            channel,
            seq,
            queue: self.inner.clone(),
            stored: false,
        })
    }

    /// Stores a delivery in its reserved place: the body is read to the
    /// end, spooled, then committed with an fsync.
    ///
    /// # Errors
    ///
    /// When the body is too large, the sender fails, the channel's byte
    /// limit is passed, or storage fails. Nothing is stored then.
    pub async fn store<S, E>(
        &self,
        mut reservation: Reservation,
        head: &RequestHead,
        body: S,
        limits: &QueueLimits,
    ) -> Result<(), EnqueueError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id = head.delivery_id.unwrap_or_else(Uuid::new_v4);
        let spool = self.inner.spool.join(id.to_string());
        let spooled = spool_body(&spool, body, limits.max_body).await;
        let body_len = match spooled {
            Ok(len) => len,
            Err(error) => {
                let _ = tokio::fs::remove_file(&spool).await;
                return Err(error);
            }
        };
        let record = encode_record(head, body_len);
        let size = body_len + record.len() as u64;
        let (count, bytes) = self.depth(reservation.channel);
        if bytes + size > limits.max_bytes && count > 0 {
            let _ = tokio::fs::remove_file(&spool).await;
            return Err(EnqueueError::Full);
        }

        let inner = self.inner.clone();
        let key = (reservation.channel.as_u128(), reservation.seq);
        let spool_path = spool.clone();
        tokio::task::spawn_blocking(move || inner.insert(key, id, &record, &spool_path))
            .await
            .context("queue writer stopped")??;
        let _ = tokio::fs::remove_file(&spool).await;

        reservation.stored = true;
        let mut channels = self.inner.lock();
        let queue = channels.entry(reservation.channel).or_default();
        queue.reserved.remove(&reservation.seq);
        queue.count += 1;
        queue.bytes += size;
        queue.wake.notify_one();
        Ok(())
    }

    /// The channel's first delivery, unless an earlier one is still being stored.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub async fn first(&self, channel: Uuid) -> anyhow::Result<Option<Queued>> {
        let inner = self.inner.clone();
        let first = tokio::task::spawn_blocking(move || inner.first(channel))
            .await
            .context("queue reader stopped")??;
        let Some(first) = first else {
            return Ok(None);
        };
        let held_back = self
            .inner
            .lock()
            .get(&channel)
            .and_then(|queue| queue.reserved.first().copied())
            .is_some_and(|earliest| earliest < first.seq);
        Ok((!held_back).then_some(first))
    }

    /// The body of a queued delivery, read chunk by chunk.
    pub fn body(
        &self,
        queued: &Queued,
    ) -> impl Stream<Item = anyhow::Result<Bytes>> + Send + 'static {
        let inner = self.inner.clone();
        let id = queued.head.delivery_id.unwrap_or_default().as_u128();
        futures::stream::iter(0..queued.chunks).then(move |index| {
            let inner = inner.clone();
            async move {
                tokio::task::spawn_blocking(move || inner.chunk(id, index))
                    .await
                    .context("queue reader stopped")?
            }
        })
    }

    /// Removes a delivery that was answered (or dropped).
    ///
    /// # Errors
    ///
    /// When the database cannot be written.
    pub async fn remove(&self, queued: &Queued) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        let key = (queued.channel.as_u128(), queued.seq);
        let id = queued.head.delivery_id.unwrap_or_default().as_u128();
        let chunks = queued.chunks;
        // Forgetting a removal in a crash only means one more delivery (at
        // least once), so only the removal that empties a queue is synced.
        let durable = self.depth(queued.channel).0 <= 1;
        let removed = tokio::task::spawn_blocking(move || inner.delete(key, id, chunks, durable))
            .await
            .context("queue writer stopped")??;
        if let Some(size) = removed {
            let mut channels = self.inner.lock();
            let queue = channels.entry(queued.channel).or_default();
            queue.count = queue.count.saturating_sub(1);
            queue.bytes = queue.bytes.saturating_sub(size);
            drop(channels);
            self.inner.removed.notify_waiters();
        }
        Ok(())
    }

    /// Resolves once no delivery is stored for any channel.
    pub async fn drained(&self) {
        loop {
            // Registered before the check, so a removal in between still wakes us.
            let removed = self.inner.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            if self.totals().0 == 0 {
                return;
            }
            removed.await;
        }
    }

    /// Removes every delivery received more than `ttl` before `now`, and
    /// returns them.
    ///
    /// # Errors
    ///
    /// When the database cannot be read or written.
    pub async fn expire(&self, now: SystemTime, ttl: Duration) -> anyhow::Result<Vec<Queued>> {
        let cutoff = now
            .checked_sub(ttl)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_millis() as u64);
        let inner = self.inner.clone();
        let stale = tokio::task::spawn_blocking(move || inner.older_than(cutoff))
            .await
            .context("queue reader stopped")??;
        for queued in &stale {
            self.remove(queued).await?;
        }
        Ok(stale)
    }
}

impl QueueInner {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, ChannelQueue>> {
        // Nothing panics while holding this lock; keep serving if that changes.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the counters and the next sequence number from the database.
    fn load(&self) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(DELIVERIES)?;
        txn.open_table(BODIES)?;
        txn.commit()?;

        let txn = self.db.begin_read()?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let mut channels = self.lock();
        let mut last_seq = 0;
        for entry in deliveries.iter()? {
            let (key, value) = entry?;
            let (channel, seq) = key.value();
            let (_, body_len, _) = decode_prefix(value.value())?;
            let queue = channels.entry(Uuid::from_u128(channel)).or_default();
            queue.count += 1;
            queue.bytes += body_len + value.value().len() as u64;
            last_seq = last_seq.max(seq);
        }
        self.next_seq.store(last_seq + 1, Ordering::Relaxed);
        Ok(())
    }

    fn insert(
        &self,
        key: (u128, u64),
        id: Uuid,
        record: &[u8],
        spool: &Path,
    ) -> anyhow::Result<()> {
        let mut file = std::fs::File::open(spool).context("cannot read a spooled body")?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut bodies = txn.open_table(BODIES)?;
            let mut buffer = vec![0u8; CHUNK_LEN];
            let mut index: u32 = 0;
            loop {
                let filled = read_full(&mut file, &mut buffer)?;
                if filled == 0 {
                    break;
                }
                bodies.insert((id.as_u128(), index), &buffer[..filled])?;
                index += 1;
            }
            let mut deliveries = txn.open_table(DELIVERIES)?;
            deliveries.insert(key, record)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn first(&self, channel: Uuid) -> anyhow::Result<Option<Queued>> {
        let txn = self.db.begin_read()?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let channel_key = channel.as_u128();
        let mut range = deliveries.range((channel_key, 0)..=(channel_key, u64::MAX))?;
        let Some(entry) = range.next() else {
            return Ok(None);
        };
        let (key, value) = entry?;
        decode_record(channel, key.value().1, value.value()).map(Some)
    }

    fn chunk(&self, id: u128, index: u32) -> anyhow::Result<Bytes> {
        let txn = self.db.begin_read()?;
        let bodies = txn.open_table(BODIES)?;
        let chunk = bodies
            .get((id, index))?
            .with_context(|| format!("body chunk {index} of a queued delivery is missing"))?;
        Ok(Bytes::copy_from_slice(chunk.value()))
    }

    /// Deletes a delivery; returns its size if it was still there.
    fn delete(
        &self,
        key: (u128, u64),
        id: u128,
        chunks: u32,
        durable: bool,
    ) -> anyhow::Result<Option<u64>> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let size = {
            let mut deliveries = txn.open_table(DELIVERIES)?;
            let removed = deliveries.remove(key)?;
            let size = match removed {
                Some(record) => {
                    let (_, body_len, _) = decode_prefix(record.value())?;
                    Some(body_len + record.value().len() as u64)
                }
                None => None,
            };
            let mut bodies = txn.open_table(BODIES)?;
            for index in 0..chunks {
                bodies.remove((id, index))?;
            }
            size
        };
        txn.commit()?;
        Ok(size)
    }

    fn older_than(&self, cutoff_ms: u64) -> anyhow::Result<Vec<Queued>> {
        let txn = self.db.begin_read()?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let mut stale = Vec::new();
        for entry in deliveries.iter()? {
            let (key, value) = entry?;
            let (channel, seq) = key.value();
            let queued = decode_record(Uuid::from_u128(channel), seq, value.value())?;
            if queued.head.received_at_ms.unwrap_or(0) < cutoff_ms {
                stale.push(queued);
            }
        }
        Ok(stale)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.stored {
            return;
        }
        let mut channels = self.queue.lock();
        if let Some(queue) = channels.get_mut(&self.channel) {
            queue.reserved.remove(&self.seq);
            // A later delivery may have waited for this place.
            queue.wake.notify_one();
        }
    }
}

/// Writes the body to `path` as it arrives and syncs it; returns its length.
async fn spool_body<S, E>(path: &Path, mut body: S, max_body: u64) -> Result<u64, EnqueueError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut file = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| EnqueueError::Sender(error.to_string()))?;
        total += chunk.len() as u64;
        if total > max_body {
            return Err(EnqueueError::TooLarge);
        }
        file.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    file.flush().await.context("cannot write a spooled body")?;
    file.into_inner()
        .sync_all()
        .await
        .context("cannot sync a spooled body")?;
    Ok(total)
}

fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Removes bodies left behind by a crash mid-store (their records were
/// never committed).
fn clear_spool(spool: &Path) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(spool).with_context(|| format!("cannot read {}", spool.display()))?;
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(())
}

/// `version: u8, body_len: u64, chunks: u32`, then the head as the wire
/// protocol encodes it.
fn encode_record(head: &RequestHead, body_len: u64) -> Vec<u8> {
    let chunks = body_len.div_ceil(CHUNK_LEN as u64) as u32;
    let mut buf = BytesMut::with_capacity(13 + 512);
    buf.put_u8(RECORD_VERSION);
    buf.put_u64(body_len);
    buf.put_u32(chunks);
    head.encode(&mut buf);
    buf.to_vec()
}

fn decode_prefix(record: &[u8]) -> anyhow::Result<(u8, u64, u32)> {
    anyhow::ensure!(record.len() >= 13, "a queued delivery record is truncated");
    let mut prefix = &record[..13];
    let version = prefix.get_u8();
    anyhow::ensure!(
        version == RECORD_VERSION,
        "unknown queue record version {version}"
    );
    Ok((version, prefix.get_u64(), prefix.get_u32()))
}

fn decode_record(channel: Uuid, seq: u64, record: &[u8]) -> anyhow::Result<Queued> {
    let (_, body_len, chunks) = decode_prefix(record)?;
    let head = RequestHead::decode(Bytes::copy_from_slice(&record[13..]))
        .context("a queued delivery record is damaged")?;
    Ok(Queued {
        channel,
        seq,
        head,
        body_len,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn limits() -> QueueLimits {
        QueueLimits {
            max_count: 3,
            max_bytes: 10 << 20,
            max_body: 4 << 20,
        }
    }

    fn head(path: &str) -> RequestHead {
        let mut head = RequestHead::new(Method::POST, path);
        head.delivery_id = Some(Uuid::new_v4());
        head.received_at_ms = Some(1_000);
        head
    }

    fn body(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            bytes
                .chunks(100_000)
                .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
                .collect::<Vec<_>>(),
        )
    }

    async fn read_body(queue: &Queue, queued: &Queued) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(queue.body(queued));
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn deliveries_come_out_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let channel = Uuid::new_v4();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        {
            let queue = Queue::open(dir.path()).unwrap();
            for (path, bytes) in [("/a", big.clone()), ("/b", b"small".to_vec())] {
                let reservation = queue.reserve(channel, &limits()).unwrap();
                queue
                    .store(reservation, &head(path), body(bytes), &limits())
                    .await
                    .unwrap();
            }
            assert!(queue.has_pending(channel));
        }
        let queue = Queue::open(dir.path()).unwrap();
        assert_eq!(queue.depth(channel).0, 2);
        let first = queue.first(channel).await.unwrap().unwrap();
        assert_eq!(first.head.path, "/a");
        assert_eq!(read_body(&queue, &first).await, big);
        queue.remove(&first).await.unwrap();
        let second = queue.first(channel).await.unwrap().unwrap();
        assert_eq!(second.head.path, "/b");
        assert_eq!(read_body(&queue, &second).await, b"small");
        queue.remove(&second).await.unwrap();
        assert!(!queue.has_pending(channel));
        assert_eq!(queue.totals(), (0, 0));
    }

    #[tokio::test]
    async fn a_delivery_still_being_stored_holds_back_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let channel = Uuid::new_v4();
        let early = queue.reserve(channel, &limits()).unwrap();
        let late = queue.reserve(channel, &limits()).unwrap();
        queue
            .store(late, &head("/late"), body(b"x".to_vec()), &limits())
            .await
            .unwrap();
        assert!(queue.first(channel).await.unwrap().is_none());
        drop(early);
        assert_eq!(
            queue.first(channel).await.unwrap().unwrap().head.path,
            "/late"
        );
    }

    #[tokio::test]
    async fn limits_and_expiry_hold() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let channel = Uuid::new_v4();
        for _ in 0..3 {
            let reservation = queue.reserve(channel, &limits()).unwrap();
            queue
                .store(reservation, &head("/"), body(vec![1; 10]), &limits())
                .await
                .unwrap();
        }
        assert!(matches!(
            queue.reserve(channel, &limits()),
            Err(EnqueueError::Full)
        ));

        let other = Uuid::new_v4();
        let reservation = queue.reserve(other, &limits()).unwrap();
        let too_big = queue
            .store(reservation, &head("/"), body(vec![0; 5 << 20]), &limits())
            .await;
        assert!(matches!(too_big, Err(EnqueueError::TooLarge)));
        assert!(!queue.has_pending(other));

        let expired = queue
            .expire(
                UNIX_EPOCH + Duration::from_secs(3600),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(expired.len(), 3);
        assert!(!queue.has_pending(channel));
    }

    #[test]
    fn a_damaged_database_is_an_error_that_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(QUEUE_FILE), vec![0x42; 8192]).unwrap();
        let error = format!("{:#}", Queue::open(dir.path()).unwrap_err());
        assert!(error.contains("queue.redb"), "{error}");
        assert!(error.contains("move it away"), "{error}");
    }
}
