//! The client's delivery history: what arrived, what the app answered, and
//! enough of both to look at it again or send it again.
//!
//! Deliveries are kept in SQLite (`history.sqlite3` in the state dir, WAL
//! mode), so `wow-client history` can read while a daemon writes and
//! several client processes can share one state dir. The newest
//! `history_max` deliveries are kept; bodies are kept up to
//! `history_body_max` bytes each, and a cut body says so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use rusqlite::{Connection, params};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::warn;
use uuid::Uuid;

use super::output::Delivery;
use crate::protocol::{RequestHead, ResponseHead};

/// Name of the history database in the state dir.
pub const HISTORY_FILE: &str = "history.sqlite3";

/// How long a writer waits for another process holding the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Records written in one transaction at most.
const WRITE_BATCH: usize = 256;

/// The writer gathers deliveries this long before a transaction: a commit
/// writes several pages and takes a dozen system calls, so one per
/// delivery would cost a busy client more than forwarding it.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// A body as kept in the history: its first bytes and its real length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptBody {
    /// Up to `history_body_max` bytes.
    pub bytes: Vec<u8>,
    /// The body's whole length.
    pub len: u64,
}

impl KeptBody {
    /// Whether bytes were cut off.
    pub fn truncated(&self) -> bool {
        (self.bytes.len() as u64) < self.len
    }

    /// Adds a chunk, keeping at most `limit` bytes.
    pub fn push(&mut self, chunk: &[u8], limit: u64) {
        self.len += chunk.len() as u64;
        let room = (limit as usize).saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// One delivery in the history.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The delivery line's data (time, profile, id, method, path, status…).
    pub delivery: Delivery,
    /// The target the request went to.
    pub target: String,
    /// The request as the relay sent it (path relative to the target).
    pub request: RequestHead,
    /// Its body.
    pub request_body: KeptBody,
    /// The app's answer head, if it answered.
    pub response: Option<ResponseHead>,
    /// The answer's body.
    pub response_body: KeptBody,
    /// For a replay: the delivery it re-sent.
    pub replay_of: Option<Uuid>,
}

/// A delivery as `wow-client history --json` prints it.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The delivery id.
    pub id: Option<Uuid>,
    /// RFC 3339 time.
    pub at: String,
    /// The profile.
    pub profile: String,
    /// Method.
    pub method: String,
    /// The path the app saw.
    pub path: String,
    /// Status the sender got.
    pub status: u16,
    /// Milliseconds from arrival to the end of the answer.
    pub elapsed_ms: u128,
    /// Request body length.
    pub bytes: u64,
    /// From the offline queue.
    pub redelivered: bool,
    /// For a replay: the original delivery.
    pub replay_of: Option<Uuid>,
}

/// The history database.
#[derive(Debug, Clone)]
pub struct History {
    connection: Arc<Mutex<Connection>>,
}

impl History {
    /// Opens the history a client already keeps in `state_dir`, for reading
    /// it: a state dir without one is most likely a mistyped `--state-dir`.
    ///
    /// # Errors
    ///
    /// When there is no history there, or it cannot be opened.
    pub fn open_existing(state_dir: &Path) -> anyhow::Result<Self> {
        let path = history_path(state_dir);
        if !path.exists() {
            anyhow::bail!(
                "no delivery history in {}: pass the --state-dir (or --profile) the client runs with",
                state_dir.display()
            );
        }
        History::open(state_dir)
    }

    /// Opens (or creates) the history in `state_dir`.
    ///
    /// # Errors
    ///
    /// When the database cannot be opened or set up.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        crate::files::ensure_private_dir(state_dir)?;
        let path = history_path(state_dir);
        crate::files::ensure_private_file(&path)?;
        let connection = Connection::open(&path).with_context(|| {
            format!(
                "cannot open the delivery history {}: move it away to start a new one",
                path.display()
            )
        })?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS deliveries (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     delivery_id TEXT,
                     profile TEXT NOT NULL,
                     at_ms INTEGER NOT NULL,
                     method TEXT NOT NULL,
                     path TEXT NOT NULL,
                     status INTEGER NOT NULL,
                     elapsed_us INTEGER NOT NULL,
                     redelivered INTEGER NOT NULL,
                     replay_of TEXT,
                     target TEXT NOT NULL,
                     request_head BLOB NOT NULL,
                     request_body BLOB NOT NULL,
                     request_body_len INTEGER NOT NULL,
                     response_head BLOB,
                     response_body BLOB NOT NULL,
                     response_body_len INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS deliveries_by_id ON deliveries (delivery_id);",
            )
            .with_context(|| format!("cannot set up the delivery history {}", path.display()))?;
        // Side files of a history written before they were private.
        for side in ["-wal", "-shm"] {
            let mut name = path.clone().into_os_string();
            name.push(side);
            let private = std::fs::Permissions::from_mode(0o600);
            let _absent = std::fs::set_permissions(&name, private);
        }
        Ok(History {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Adds entries, then drops the oldest beyond `keep`.
    ///
    /// # Errors
    ///
    /// When the database cannot be written.
    pub fn record(&self, entries: &[Entry], keep: usize) -> anyhow::Result<()> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO deliveries (delivery_id, profile, at_ms, method, path, status,
                     elapsed_us, redelivered, replay_of, target, request_head, request_body,
                     request_body_len, response_head, response_body, response_body_len)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            for entry in entries {
                let delivery = &entry.delivery;
                insert.execute(params![
                    delivery.id.map(|id| id.to_string()),
                    delivery.profile,
                    millis(delivery.at),
                    delivery.method.as_str(),
                    delivery.path,
                    delivery.status,
                    delivery.elapsed.as_micros() as i64,
                    delivery.redelivered,
                    entry.replay_of.map(|id| id.to_string()),
                    entry.target,
                    encode_request(&entry.request),
                    entry.request_body.bytes,
                    entry.request_body.len as i64,
                    entry.response.as_ref().map(encode_response),
                    entry.response_body.bytes,
                    entry.response_body.len as i64,
                ])?;
            }
        }
        // Ids are AUTOINCREMENT, so the newest `keep` are those above
        // MAX(id) - keep: one lookup, where walking `keep` rows back read
        // every one of their pages on every write.
        transaction.execute(
            "DELETE FROM deliveries WHERE id <= (SELECT MAX(id) FROM deliveries) - ?1",
            params![keep as i64],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// The newest `limit` deliveries (of `profile`, if given), oldest first.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn list(&self, profile: Option<&str>, limit: usize) -> anyhow::Result<Vec<Entry>> {
        let connection = self.lock();
        let mut query = connection.prepare(
            "SELECT * FROM (SELECT * FROM deliveries WHERE (?1 IS NULL OR profile = ?1)
                 ORDER BY id DESC LIMIT ?2) ORDER BY id ASC",
        )?;
        let rows = query.query_map(params![profile, limit as i64], row_to_entry)?;
        rows.map(|row| row?).collect()
    }

    /// The delivery whose id is or starts with `id`.
    ///
    /// # Errors
    ///
    /// When no delivery, or more than one, matches; or the database fails.
    pub fn find(&self, id: &str) -> anyhow::Result<Entry> {
        let id = id.trim().to_ascii_lowercase();
        anyhow::ensure!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "{id:?} is not a delivery id: copy one from `wow-client history`"
        );
        let connection = self.lock();
        let mut query = connection.prepare(
            "SELECT * FROM deliveries WHERE delivery_id LIKE ?1 || '%' ORDER BY id DESC LIMIT 2",
        )?;
        let matches = query
            .query_map(params![id], row_to_entry)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut matches = matches.into_iter();
        match (matches.next(), matches.next()) {
            (Some(found), None) => found,
            (None, _) => {
                anyhow::bail!("no delivery {id} in the history: `wow-client history` lists them")
            }
            (Some(_), Some(_)) => {
                anyhow::bail!("{id} matches several deliveries: give more of the id")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite calls do not panic; recover the connection if that changes.
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a state dir keeps its history.
pub fn history_path(state_dir: &Path) -> PathBuf {
    state_dir.join(HISTORY_FILE)
}

/// Sends entries to a background writer, so recording never slows a delivery.
#[derive(Debug, Clone)]
pub struct Recorder {
    entries: mpsc::UnboundedSender<Entry>,
}

impl Recorder {
    /// Starts the writer for `history`, keeping `keep` deliveries. It stops
    /// once every `Recorder` is dropped and its queue is written: the
    /// returned handle ends then, so an exiting client can wait for it.
    pub fn start(history: History, keep: usize) -> (Self, tokio::task::JoinHandle<()>) {
        let (entries, mut queued) = mpsc::unbounded_channel::<Entry>();
        let writer = tokio::spawn(async move {
            while let Some(first) = queued.recv().await {
                let mut batch = vec![first];
                tokio::time::sleep(BATCH_WINDOW).await;
                while batch.len() < WRITE_BATCH {
                    match queued.try_recv() {
                        Ok(entry) => batch.push(entry),
                        Err(_) => break,
                    }
                }
                let history = history.clone();
                let written =
                    tokio::task::spawn_blocking(move || history.record(&batch, keep)).await;
                if let Ok(Err(error)) = written {
                    warn!(
                        error = format!("{error:#}"),
                        "cannot write the delivery history"
                    );
                }
            }
        });
        (Recorder { entries }, writer)
    }

    /// Queues an entry for writing.
    pub fn record(&self, entry: Entry) {
        // The writer only stops with the client.
        let _stopped = self.entries.send(entry);
    }
}

impl Entry {
    /// The line `wow-client history --json` prints.
    pub fn summary(&self) -> Summary {
        let delivery = &self.delivery;
        Summary {
            id: delivery.id,
            at: humantime::format_rfc3339_seconds(delivery.at).to_string(),
            profile: delivery.profile.clone(),
            method: delivery.method.to_string(),
            path: delivery.path.clone(),
            status: delivery.status,
            elapsed_ms: delivery.elapsed.as_millis(),
            bytes: delivery.bytes,
            redelivered: delivery.redelivered,
            replay_of: self.replay_of,
        }
    }
}

type Row = Result<Entry, anyhow::Error>;

fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let id: Option<String> = row.get("delivery_id")?;
    let replay_of: Option<String> = row.get("replay_of")?;
    let method: String = row.get("method")?;
    let request_head: Vec<u8> = row.get("request_head")?;
    let response_head: Option<Vec<u8>> = row.get("response_head")?;
    let at_ms: i64 = row.get("at_ms")?;
    let elapsed_us: i64 = row.get("elapsed_us")?;
    let request_len: i64 = row.get("request_body_len")?;
    let response_len: i64 = row.get("response_body_len")?;
    let delivery = |method: http::Method| -> rusqlite::Result<Delivery> {
        Ok(Delivery {
            at: UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64),
            profile: row.get("profile")?,
            id: id.as_deref().and_then(|id| Uuid::parse_str(id).ok()),
            method,
            path: row.get("path")?,
            status: row.get("status")?,
            elapsed: Duration::from_micros(elapsed_us.max(0) as u64),
            bytes: request_len.max(0) as u64,
            redelivered: row.get("redelivered")?,
        })
    };
    let entry = (|| -> anyhow::Result<Entry> {
        let method = method.parse().context("a stored method is damaged")?;
        let request = RequestHead::decode(Bytes::from(request_head))
            .context("a stored request head is damaged")?;
        let response = response_head
            .map(|head| ResponseHead::decode(Bytes::from(head)))
            .transpose()
            .context("a stored response head is damaged")?;
        Ok(Entry {
            delivery: delivery(method)?,
            target: row.get("target")?,
            request,
            request_body: KeptBody {
                bytes: row.get("request_body")?,
                len: request_len.max(0) as u64,
            },
            response,
            response_body: KeptBody {
                bytes: row.get("response_body")?,
                len: response_len.max(0) as u64,
            },
            replay_of: replay_of.as_deref().and_then(|id| Uuid::parse_str(id).ok()),
        })
    })();
    Ok(entry)
}

fn encode_request(head: &RequestHead) -> Vec<u8> {
    let mut buf = BytesMut::new();
    head.encode(&mut buf);
    buf.to_vec()
}

fn encode_response(head: &ResponseHead) -> Vec<u8> {
    let mut buf = BytesMut::new();
    head.encode(&mut buf);
    buf.to_vec()
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};

    use super::*;

    fn entry(n: u32, body: &[u8], limit: u64) -> Entry {
        let mut request = RequestHead::new(Method::POST, format!("/hook/{n}"));
        request
            .headers
            .append("x-n", n.to_string().parse().unwrap());
        let mut request_body = KeptBody::default();
        request_body.push(body, limit);
        let mut response = ResponseHead::new(StatusCode::OK);
        response
            .headers
            .append("set-cookie", "a=1".parse().unwrap());
        Entry {
            delivery: Delivery {
                at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + u64::from(n)),
                profile: if n.is_multiple_of(2) { "even" } else { "odd" }.to_owned(),
                id: Some(Uuid::new_v4()),
                method: Method::POST,
                path: format!("/app/hook/{n}"),
                status: 200,
                elapsed: Duration::from_millis(3),
                bytes: body.len() as u64,
                redelivered: false,
            },
            target: "http://127.0.0.1:3000/app".to_owned(),
            request,
            request_body,
            response: Some(response),
            response_body: KeptBody {
                bytes: b"ok".to_vec(),
                len: 2,
            },
            replay_of: None,
        }
    }

    #[test]
    fn deliveries_are_kept_newest_last_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        let entries: Vec<Entry> = (0..12).map(|n| entry(n, b"body", 1024)).collect();
        history.record(&entries[..7], 10).unwrap();
        history.record(&entries[7..], 10).unwrap();
        let kept = history.list(None, 100).unwrap();
        assert_eq!(kept.len(), 10);
        assert_eq!(kept[0].request.path, "/hook/2");
        assert_eq!(kept[9].request.path, "/hook/11");
        let odd = history.list(Some("odd"), 2).unwrap();
        assert_eq!(
            odd.iter()
                .map(|e| e.request.path.as_str())
                .collect::<Vec<_>>(),
            ["/hook/9", "/hook/11"]
        );
    }

    #[test]
    fn a_delivery_comes_back_whole_or_marked_cut() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        let whole = entry(1, b"\x00\xffbinary", 1024);
        let cut = entry(2, &[7u8; 5000], 1000);
        history.record(&[whole.clone(), cut.clone()], 10).unwrap();

        let id = whole.delivery.id.unwrap().to_string();
        let found = history.find(&id[..8]).unwrap();
        assert_eq!(found.request, whole.request);
        assert_eq!(found.request_body, whole.request_body);
        assert!(!found.request_body.truncated());
        assert_eq!(found.response, whole.response);

        let found = history.find(&cut.delivery.id.unwrap().to_string()).unwrap();
        assert!(found.request_body.truncated());
        assert_eq!(found.request_body.bytes.len(), 1000);
        assert_eq!(found.request_body.len, 5000);

        assert!(history.find("ffffffff").is_err());
        assert!(history.find("not an id").is_err());
    }
}
