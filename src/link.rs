//! One WebSocket between server and client, as both sides run it: frames
//! written in batches, pings every [`PING_INTERVAL`], and a peer that stays
//! silent for [`DEAD_AFTER`] declared dead.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// How often each side pings the other.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// A peer that sent nothing (not even a pong) for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(30);

/// Frames written per flush at most, so a busy link still gets pings out.
const WRITE_BATCH: usize = 64;

/// Liveness and close state of one WebSocket.
///
/// Every message received marks the peer as heard, so that costs one
/// atomic store: a [`Link::probe`] that waits for the peer is woken only
/// while it waits.
#[derive(Debug)]
pub struct Link {
    closing: CancellationToken,
    close_code: AtomicU16,
    /// What `last_heard` counts from.
    origin: Instant,
    /// Nanoseconds after `origin` the peer was last heard from.
    last_heard: AtomicU64,
    /// Probes waiting to hear from the peer.
    probes: AtomicUsize,
    /// Wakes waiting probes when the peer is heard from.
    heard_now: Notify,
    ping_now: Notify,
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The peer sent a close frame (with its code, if any).
    PeerClosed(Option<CloseCode>),
    /// The connection dropped without a close frame.
    Dropped(String),
    /// The peer was silent for [`DEAD_AFTER`].
    Silent,
    /// The peer broke the protocol; the link was closed with 1002.
    Protocol(String),
    /// This side closed the link with the given code.
    Closed(CloseCode),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::PeerClosed(Some(code)) => write!(f, "peer closed the connection ({code})"),
            Ended::PeerClosed(None) => f.write_str("peer closed the connection"),
            Ended::Dropped(error) => write!(f, "connection dropped: {error}"),
            Ended::Silent => write!(f, "peer silent for {}s", DEAD_AFTER.as_secs()),
            Ended::Protocol(error) => write!(f, "protocol error: {error}"),
            Ended::Closed(code) => write!(f, "closed by this side ({code})"),
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

impl Link {
    /// A link not yet running.
    pub fn new() -> Self {
        Link {
            closing: CancellationToken::new(),
            close_code: AtomicU16::new(CloseCode::Normal.into()),
            origin: Instant::now(),
            last_heard: AtomicU64::new(0),
            probes: AtomicUsize::new(0),
            heard_now: Notify::new(),
            ping_now: Notify::new(),
        }
    }

    /// Pings the peer now and waits up to `limit` for it to be heard from.
    /// Returns whether it answered.
    pub async fn probe(&self, limit: Duration) -> bool {
        self.probes.fetch_add(1, Ordering::SeqCst);
        // Counted off even when the caller drops this future half-way.
        let _probing = Probing(&self.probes);
        let asked = self.now();
        self.ping_now.notify_one();
        let answered = async {
            loop {
                // Registered before the check, so a message in between still wakes us.
                let heard = self.heard_now.notified();
                tokio::pin!(heard);
                heard.as_mut().enable();
                if self.last_heard.load(Ordering::SeqCst) > asked {
                    return;
                }
                heard.await;
            }
        };
        tokio::time::timeout(limit, answered).await.is_ok()
    }

    /// Asks the running link to send a close frame with `code` and stop.
    pub fn close(&self, code: CloseCode) {
        self.close_code.store(code.into(), Ordering::Relaxed);
        self.closing.cancel();
    }

    /// How long ago the peer was last heard from.
    pub fn silent_for(&self) -> Duration {
        self.heard_at().elapsed()
    }

    fn heard_at(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last_heard.load(Ordering::Relaxed))
    }

    fn heard(&self) {
        self.last_heard.fetch_max(self.now(), Ordering::SeqCst);
        if self.probes.load(Ordering::SeqCst) > 0 {
            self.heard_now.notify_waiters();
        }
    }

    /// Nanoseconds since `origin` (enough for 584 years).
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs the link until it ends: writes `frames` as binary messages,
    /// hands every binary message received to `on_binary`, and keeps the
    /// peer alive with pings.
    pub async fn run<S>(
        &self,
        socket: S,
        frames: mpsc::UnboundedReceiver<Bytes>,
        on_binary: impl FnMut(Bytes) -> Result<(), String>,
    ) -> Ended
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        self.heard();
        let (sink, stream) = socket.split();
        tokio::select! {
            ended = self.read_loop(stream, on_binary) => ended,
            ended = self.write_loop(sink, frames) => ended,
        }
    }

    async fn read_loop<S>(
        &self,
        mut stream: S,
        mut on_binary: impl FnMut(Bytes) -> Result<(), String>,
    ) -> Ended
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        // One timer for the whole connection, moved on only when it fires:
        // a timer per message would cost two trips to the timer wheel each.
        let silence = tokio::time::sleep_until(self.heard_at() + DEAD_AFTER);
        tokio::pin!(silence);
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = &mut silence => {
                    let deadline = self.heard_at() + DEAD_AFTER;
                    if deadline <= Instant::now() {
                        return Ended::Silent;
                    }
                    silence.as_mut().reset(deadline);
                    continue;
                }
            };
            let message = match next {
                None => return Ended::Dropped("end of stream".to_owned()),
                Some(Err(error)) => return Ended::Dropped(error.to_string()),
                Some(Ok(message)) => message,
            };
            self.heard();
            match message {
                Message::Binary(bytes) => {
                    if let Err(error) = on_binary(bytes) {
                        self.close(CloseCode::Protocol);
                        return Ended::Protocol(error);
                    }
                }
                Message::Close(frame) => return Ended::PeerClosed(frame.map(|frame| frame.code)),
                Message::Text(_) => {
                    self.close(CloseCode::Unsupported);
                    return Ended::Protocol("text message on a binary protocol".to_owned());
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    async fn write_loop<S>(&self, mut sink: S, mut frames: mpsc::UnboundedReceiver<Bytes>) -> Ended
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        let mut open = true;
        // Kept across batches: made anew each time, they would register
        // with their `Notify` and leave it again on every batch.
        let ping_now = self.ping_now.notified();
        let closing = self.closing.cancelled();
        tokio::pin!(ping_now, closing);
        loop {
            let written = tokio::select! {
                frame = frames.recv(), if open => match frame {
                    Some(frame) => write_batch(&mut sink, frame, &mut frames).await,
                    None => {
                        open = false;
                        Ok(())
                    }
                },
                _ = ping.tick() => sink.send(Message::Ping(Bytes::new())).await,
                () = &mut ping_now => {
                    ping_now.set(self.ping_now.notified());
                    sink.send(Message::Ping(Bytes::new())).await
                }
                () = &mut closing => {
                    // Frames queued before the close go out first: the last
                    // answers of a drain must not be cut off by it.
                    while let Ok(frame) = frames.try_recv() {
                        if sink.feed(Message::Binary(frame)).await.is_err() {
                            break;
                        }
                    }
                    let code = CloseCode::from(self.close_code.load(Ordering::Relaxed));
                    let frame = CloseFrame { code, reason: "".into() };
                    // The socket is dropped next whether or not this arrives.
                    let _unsent = sink.send(Message::Close(Some(frame))).await;
                    return Ended::Closed(code);
                }
            };
            if let Err(error) = written {
                return Ended::Dropped(error.to_string());
            }
        }
    }
}

/// One waiting [`Link::probe`], counted while it lives.
struct Probing<'a>(&'a AtomicUsize);

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes
/// once: many small frames cost one system call.
///
/// It first lets the tasks that are already runnable go ahead: the one that
/// queued `first` (a request head) usually has the body and its end ready
/// to queue too, and they then share its write instead of needing their own.
async fn write_batch<S>(
    sink: &mut S,
    first: Bytes,
    frames: &mut mpsc::UnboundedReceiver<Bytes>,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    tokio::task::yield_now().await;
    sink.feed(Message::Binary(first)).await?;
    for _ in 1..WRITE_BATCH {
        match frames.try_recv() {
            Ok(frame) => sink.feed(Message::Binary(frame)).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_probe_answers_once_the_peer_is_heard_from() {
        let link = Arc::new(Link::new());
        let prober = link.clone();
        let probe = tokio::spawn(async move { prober.probe(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        link.heard();
        assert!(probe.await.unwrap());
        assert_eq!(link.probes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_fails_the_probe_and_no_probe_lingers() {
        let link = Link::new();
        assert!(!link.probe(Duration::from_secs(5)).await);
        assert_eq!(link.probes.load(Ordering::SeqCst), 0);

        let abandoned =
            tokio::time::timeout(Duration::from_millis(1), link.probe(Duration::from_secs(5)))
                .await;
        assert!(abandoned.is_err());
        assert_eq!(link.probes.load(Ordering::SeqCst), 0);
        assert!(link.silent_for() >= Duration::from_secs(5));
    }
}
