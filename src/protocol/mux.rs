//! Many request/response streams over one WebSocket, each with its own
//! credit window.
//!
//! A [`Multiplexer`] owns the table of open streams of one connection. The
//! session that owns the WebSocket feeds it every decoded frame and writes
//! out every frame it emits (an unbounded queue whose size is bounded by the
//! credit windows: at most [`INITIAL_WINDOW`] body bytes per stream and
//! direction can be unacknowledged at any time).
//!
//! A stream lives until both directions have ended (END sent and END
//! received) or it is reset. Every piece of code that takes part in a stream
//! holds a [`StreamHandle`] or an [`InboundBody`]; when the last of them is
//! dropped while the stream is still open, the stream is reset with
//! [`ResetCode::Cancel`], so a sender that hangs up or a task that is
//! cancelled never leaves the other side waiting.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::frame::{
    self, ClientMessage, MAX_DATA_LEN, ResetCode, ServerMessage, StreamFrame, StreamId,
};
use super::head::{RequestHead, ResponseHead};

/// Body bytes one side may send on a stream before the receiver grants
/// more credit (256 KiB). Fixed by protocol version 1.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Credit is returned once this many bytes were consumed (64 KiB), so a
/// large body costs one CREDIT frame per 64 KiB rather than one per chunk.
const CREDIT_BATCH: u32 = INITIAL_WINDOW / 4;

/// Which end of the tunnel a multiplexer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The relay: opens streams, sends requests, receives responses.
    Server,
    /// The agent: accepts streams, sends responses.
    Client,
}

/// Why a stream ended without completing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer reset the stream.
    #[error("stream reset by peer ({code:?}): {reason}")]
    Reset {
        /// The peer's reason code.
        code: ResetCode,
        /// The peer's detail for the log.
        reason: String,
    },
    /// The WebSocket closed while the stream was open.
    #[error("tunnel connection lost")]
    ConnectionLost {
        /// Whether the peer had already sent anything for this stream, i.e.
        /// whether it certainly received the request.
        acknowledged: bool,
    },
    /// This side reset the stream (for example after a body grew too large).
    #[error("stream closed")]
    Closed,
}

/// Why a new stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The connection is closed or closing.
    #[error("tunnel connection closed")]
    Closed,
    /// The connection already carries its maximum number of streams.
    #[error("too many concurrent requests on the channel")]
    Busy,
}

/// A protocol violation by the peer that ends the whole connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer violated the protocol: {0}")]
pub struct ConnectionError(pub &'static str);

/// One end of the stream table of a tunnel connection.
#[derive(Debug, Clone)]
pub struct Multiplexer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    side: Side,
    max_streams: usize,
    outbound: mpsc::UnboundedSender<Bytes>,
    next_stream: AtomicU32,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    closed: bool,
    streams: HashMap<StreamId, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Server side: the waiter for the response head.
    head: Option<oneshot::Sender<Result<ResponseHead, StreamError>>>,
    /// Where inbound body chunks go; `None` once the inbound body ended.
    inbound: Option<mpsc::UnboundedSender<Chunk>>,
    /// Bytes the peer may still send before it needs more credit.
    receive_window: Arc<AtomicI64>,
    /// Bytes this side may still send.
    send_credit: Arc<Semaphore>,
    /// END or RESET was sent by this side.
    local_done: bool,
    /// END was received from the peer.
    remote_done: bool,
    /// The peer has sent at least one frame for this stream.
    acknowledged: bool,
}

#[derive(Debug)]
enum Chunk {
    Data(Bytes),
    End,
    Failed(StreamError),
}

/// A request the server opened, as the server sees it.
#[derive(Debug)]
pub struct OutgoingRequest {
    /// Sends the request body and resets the stream.
    pub stream: StreamHandle,
    /// Resolves to the app's response head and body.
    pub response: ResponseWaiter,
}

/// Resolves once the client sent the response head.
#[derive(Debug)]
pub struct ResponseWaiter {
    head: oneshot::Receiver<Result<ResponseHead, StreamError>>,
    body: InboundBody,
}

/// A request the client accepted, as the client sees it.
#[derive(Debug)]
pub struct IncomingRequest {
    /// Method, path, query and headers.
    pub head: RequestHead,
    /// The request body as it arrives.
    pub body: InboundBody,
    /// Sends the response head and body, or resets the stream.
    pub stream: StreamHandle,
}

/// This side's handle on one stream: sends its body, ends or resets it.
#[derive(Debug, Clone)]
pub struct StreamHandle {
    inner: Arc<StreamRef>,
}

/// Keeps a stream alive; the last one dropped resets an unfinished stream.
#[derive(Debug)]
struct StreamRef {
    id: StreamId,
    shared: Arc<Shared>,
    send_credit: Arc<Semaphore>,
}

/// The body arriving on a stream; returns credit to the peer as it is read.
#[derive(Debug)]
pub struct InboundBody {
    stream: Arc<StreamRef>,
    chunks: mpsc::UnboundedReceiver<Chunk>,
    receive_window: Arc<AtomicI64>,
    unreturned_credit: u32,
    size_hint: Option<u64>,
    ended: bool,
}

impl Multiplexer {
    /// A multiplexer for one connection, and the queue of encoded frames the
    /// owner must write to the WebSocket in order.
    pub fn new(side: Side, max_streams: usize) -> (Self, mpsc::UnboundedReceiver<Bytes>) {
        let (outbound, frames) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            side,
            max_streams,
            outbound,
            next_stream: AtomicU32::new(1),
            table: Mutex::new(Table::default()),
        });
        (Multiplexer { shared }, frames)
    }

    /// How many streams are open.
    pub fn active_streams(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// Server side: opens a stream and sends the request head.
    ///
    /// # Errors
    ///
    /// [`OpenError::Closed`] once the connection ended, [`OpenError::Busy`]
    /// when it already carries `max_streams` streams.
    pub fn open(&self, head: &RequestHead) -> Result<OutgoingRequest, OpenError> {
        let (head_tx, head_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::unbounded_channel();
        let receive_window = Arc::new(AtomicI64::new(i64::from(INITIAL_WINDOW)));
        let send_credit = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        // Encoded before the lock is taken; only the id is filled in under it.
        let mut frame = frame::encode_request(0, head);

        let id = {
            let mut table = self.shared.lock();
            if table.closed {
                return Err(OpenError::Closed);
            }
            if table.streams.len() >= self.shared.max_streams {
                return Err(OpenError::Busy);
            }
            let id = self.shared.allocate_id(&table);
            table.streams.insert(
                id,
                Entry::new(
                    Some(head_tx),
                    chunk_tx,
                    receive_window.clone(),
                    send_credit.clone(),
                ),
            );
            // Sent under the lock so that no frame of the stream can overtake its head.
            frame::set_stream(&mut frame, id);
            self.shared.send(frame.freeze());
            id
        };

        let stream = Arc::new(StreamRef {
            id,
            shared: self.shared.clone(),
            send_credit,
        });
        let body = InboundBody::new(stream.clone(), chunk_rx, receive_window, None);
        Ok(OutgoingRequest {
            stream: StreamHandle { inner: stream },
            response: ResponseWaiter {
                head: head_rx,
                body,
            },
        })
    }

    /// Server side: handles a frame from the client.
    ///
    /// # Errors
    ///
    /// A frame that breaks the protocol for the whole connection.
    pub fn receive_client_message(&self, message: ClientMessage) -> Result<(), ConnectionError> {
        match message {
            ClientMessage::Response { stream, head } => {
                self.receive_response(stream, head);
                Ok(())
            }
            ClientMessage::Stream(frame) => self.receive_stream_frame(frame),
        }
    }

    /// Client side: handles a frame from the server; a new request comes
    /// back to be forwarded to the app.
    ///
    /// # Errors
    ///
    /// A frame that breaks the protocol for the whole connection.
    pub fn receive_server_message(
        &self,
        message: ServerMessage,
    ) -> Result<Option<IncomingRequest>, ConnectionError> {
        match message {
            ServerMessage::Request { stream, head } => self.accept(stream, head),
            ServerMessage::Stream(frame) => self.receive_stream_frame(frame).map(|()| None),
            ServerMessage::GoAway => Ok(None),
        }
    }

    /// Server side: tells the client no new streams will come (the server
    /// is draining); open streams finish normally.
    pub fn go_away(&self) {
        self.shared.send(ServerMessage::GoAway.encode());
    }

    /// Ends every open stream because the connection is gone, and refuses
    /// new ones.
    pub fn close(&self) {
        let streams = {
            let mut table = self.shared.lock();
            table.closed = true;
            std::mem::take(&mut table.streams)
        };
        for (_, entry) in streams {
            let error = StreamError::ConnectionLost {
                acknowledged: entry.acknowledged,
            };
            entry.fail(error);
        }
    }

    fn accept(
        &self,
        id: StreamId,
        head: RequestHead,
    ) -> Result<Option<IncomingRequest>, ConnectionError> {
        if self.shared.side != Side::Client {
            return Err(ConnectionError("REQUEST sent to the server"));
        }
        let (chunk_tx, chunk_rx) = mpsc::unbounded_channel();
        let receive_window = Arc::new(AtomicI64::new(i64::from(INITIAL_WINDOW)));
        let send_credit = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        {
            let mut table = self.shared.lock();
            if table.closed {
                return Ok(None);
            }
            if id == 0 || table.streams.contains_key(&id) {
                return Err(ConnectionError("REQUEST reuses an open stream id"));
            }
            let mut entry = Entry::new(None, chunk_tx, receive_window.clone(), send_credit.clone());
            entry.acknowledged = true;
            table.streams.insert(id, entry);
        }

        let stream = Arc::new(StreamRef {
            id,
            shared: self.shared.clone(),
            send_credit,
        });
        let size_hint = content_length(&head.headers);
        let body = InboundBody::new(stream.clone(), chunk_rx, receive_window, size_hint);
        Ok(Some(IncomingRequest {
            head,
            body,
            stream: StreamHandle { inner: stream },
        }))
    }

    fn receive_response(&self, id: StreamId, head: ResponseHead) {
        let mut table = self.shared.lock();
        let Some(entry) = table.streams.get_mut(&id) else {
            // The stream was reset on our side; the client will see our RESET.
            return;
        };
        entry.acknowledged = true;
        match entry.head.take() {
            Some(waiter) => {
                // The waiter may be gone (sender hung up); the stream's
                // handles then reset it.
                let _unheard = waiter.send(Ok(head));
            }
            None => {
                drop(table);
                self.shared
                    .reset(id, ResetCode::Protocol, "second response head");
            }
        }
    }

    fn receive_stream_frame(&self, frame: StreamFrame) -> Result<(), ConnectionError> {
        match frame {
            StreamFrame::Data { stream, data } => self.receive_data(stream, data),
            StreamFrame::End { stream } => self.receive_end(stream),
            StreamFrame::Reset {
                stream,
                code,
                reason,
            } => self.receive_reset(stream, code, reason),
            StreamFrame::Credit { stream, increment } => self.receive_credit(stream, increment)?,
        }
        Ok(())
    }

    fn receive_data(&self, id: StreamId, data: Bytes) {
        let mut table = self.shared.lock();
        let Some(entry) = table.streams.get_mut(&id) else {
            return;
        };
        entry.acknowledged = true;
        let len = data.len() as i64;
        if entry.receive_window.fetch_sub(len, Ordering::AcqRel) < len {
            drop(table);
            self.shared
                .reset(id, ResetCode::FlowControl, "data beyond the credit window");
            return;
        }
        match &entry.inbound {
            Some(inbound) => {
                // A dropped receiver means nobody reads this body any more;
                // its last handle resets the stream.
                let _unread = inbound.send(Chunk::Data(data));
            }
            None => {
                drop(table);
                self.shared.reset(id, ResetCode::Protocol, "data after END");
            }
        }
    }

    fn receive_end(&self, id: StreamId) {
        let mut table = self.shared.lock();
        let Some(entry) = table.streams.get_mut(&id) else {
            return;
        };
        entry.acknowledged = true;
        if let Some(inbound) = entry.inbound.take() {
            let _unread = inbound.send(Chunk::End);
        }
        if entry.head.is_some() {
            drop(table);
            self.shared
                .reset(id, ResetCode::Protocol, "END before the response head");
            return;
        }
        entry.remote_done = true;
        if entry.local_done {
            table.streams.remove(&id);
        }
    }

    fn receive_reset(&self, id: StreamId, code: ResetCode, reason: String) {
        let entry = self.shared.lock().streams.remove(&id);
        if let Some(entry) = entry {
            entry.fail(StreamError::Reset { code, reason });
        }
    }

    fn receive_credit(&self, id: StreamId, increment: u32) -> Result<(), ConnectionError> {
        let table = self.shared.lock();
        let Some(entry) = table.streams.get(&id) else {
            return Ok(());
        };
        let available = entry.send_credit.available_permits() as u64;
        if available + u64::from(increment) > u64::from(u32::MAX) {
            return Err(ConnectionError("credit window overflow"));
        }
        entry.send_credit.add_permits(increment as usize);
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // No code panics while holding the table lock; recover the data if
        // that ever changes rather than poisoning every later request.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn allocate_id(&self, table: &Table) -> StreamId {
        loop {
            let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !table.streams.contains_key(&id) {
                return id;
            }
        }
    }

    fn send(&self, frame: Bytes) {
        // The writer is gone only when the connection is; the reader then
        // closes the multiplexer and every stream learns of it.
        let _closed = self.outbound.send(frame);
    }

    fn send_stream_frame(&self, frame: StreamFrame) {
        self.send(match self.side {
            Side::Server => ServerMessage::Stream(frame).encode(),
            Side::Client => ClientMessage::Stream(frame).encode(),
        });
    }

    /// Resets the stream if it is still open: tells the peer and fails the
    /// local waiters.
    fn reset(&self, id: StreamId, code: ResetCode, reason: &str) {
        let entry = self.lock().streams.remove(&id);
        let Some(entry) = entry else {
            return;
        };
        self.send_stream_frame(StreamFrame::Reset {
            stream: id,
            code,
            reason: reason.to_owned(),
        });
        entry.fail(StreamError::Closed);
    }
}

impl Entry {
    fn new(
        head: Option<oneshot::Sender<Result<ResponseHead, StreamError>>>,
        inbound: mpsc::UnboundedSender<Chunk>,
        receive_window: Arc<AtomicI64>,
        send_credit: Arc<Semaphore>,
    ) -> Self {
        Entry {
            head,
            inbound: Some(inbound),
            receive_window,
            send_credit,
            local_done: false,
            remote_done: false,
            acknowledged: false,
        }
    }

    fn fail(self, error: StreamError) {
        self.send_credit.close();
        if let Some(head) = self.head {
            let _unheard = head.send(Err(error.clone()));
        }
        if let Some(inbound) = self.inbound {
            let _unread = inbound.send(Chunk::Failed(error));
        }
    }
}

impl StreamHandle {
    /// The stream's id on its connection.
    pub fn id(&self) -> StreamId {
        self.inner.id
    }

    /// Client side: sends the response head.
    pub fn send_response(&self, head: &ResponseHead) {
        let shared = &self.inner.shared;
        if shared.lock().streams.contains_key(&self.inner.id) {
            shared.send(frame::encode_response(self.inner.id, head));
        }
    }

    /// Sends body bytes as DATA frames, waiting for credit as needed.
    ///
    /// # Errors
    ///
    /// [`StreamError::Closed`] when the stream was reset or the connection
    /// lost; nothing more can be sent.
    ///
    /// # Cancel safety
    ///
    /// Cancelling may leave part of `data` sent; the stream is then only fit
    /// to be reset.
    pub async fn send_data(&self, mut data: Bytes) -> Result<(), StreamError> {
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(MAX_DATA_LEN));
            self.inner
                .send_credit
                .acquire_many(piece.len() as u32)
                .await
                .map_err(|_| StreamError::Closed)?
                .forget();
            self.inner.shared.send_stream_frame(StreamFrame::Data {
                stream: self.inner.id,
                data: piece,
            });
        }
        Ok(())
    }

    /// Sends END: this side's body is complete.
    pub fn finish(&self) {
        let shared = &self.inner.shared;
        let mut table = shared.lock();
        let Some(entry) = table.streams.get_mut(&self.inner.id) else {
            return;
        };
        if entry.local_done {
            return;
        }
        entry.local_done = true;
        shared.send_stream_frame(StreamFrame::End {
            stream: self.inner.id,
        });
        if entry.remote_done {
            table.streams.remove(&self.inner.id);
        }
    }

    /// Abandons the stream in both directions, telling the peer why.
    pub fn reset(&self, code: ResetCode, reason: &str) {
        self.inner.shared.reset(self.inner.id, code, reason);
    }
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        self.shared
            .reset(self.id, ResetCode::Cancel, "stream abandoned");
    }
}

impl ResponseWaiter {
    /// Waits for the response head.
    ///
    /// # Errors
    ///
    /// The reset or connection loss that ended the stream first.
    pub async fn recv(self) -> Result<(ResponseHead, InboundBody), StreamError> {
        let head = self.head.await.map_err(|_| StreamError::Closed)??;
        let mut body = self.body;
        body.size_hint = content_length(&head.headers);
        Ok((head, body))
    }
}

impl InboundBody {
    fn new(
        stream: Arc<StreamRef>,
        chunks: mpsc::UnboundedReceiver<Chunk>,
        receive_window: Arc<AtomicI64>,
        size_hint: Option<u64>,
    ) -> Self {
        InboundBody {
            stream,
            chunks,
            receive_window,
            unreturned_credit: 0,
            size_hint,
            ended: false,
        }
    }

    /// A handle on the stream this body arrives on.
    pub fn stream(&self) -> StreamHandle {
        StreamHandle {
            inner: self.stream.clone(),
        }
    }

    fn return_credit(&mut self, consumed: usize) {
        self.unreturned_credit += consumed as u32;
        if self.unreturned_credit < CREDIT_BATCH {
            return;
        }
        let increment = std::mem::take(&mut self.unreturned_credit);
        self.receive_window
            .fetch_add(i64::from(increment), Ordering::AcqRel);
        self.stream.shared.send_stream_frame(StreamFrame::Credit {
            stream: self.stream.id,
            increment,
        });
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let chunk = match self.chunks.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(chunk) => chunk,
        };
        match chunk {
            Some(Chunk::Data(data)) => {
                self.return_credit(data.len());
                Poll::Ready(Some(Ok(data)))
            }
            Some(Chunk::End) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Some(Chunk::Failed(error)) => {
                self.ended = true;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                self.ended = true;
                Poll::Ready(Some(Err(StreamError::Closed)))
            }
        }
    }
}

impl Stream for InboundBody {
    type Item = Result<Bytes, StreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_chunk(cx)
    }
}

impl Body for InboundBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        self.poll_chunk(cx)
            .map(|chunk| chunk.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.size_hint == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.size_hint {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?.to_str().ok()?.trim().parse().ok()?;
    // Conflicting lengths are left for the HTTP layer to refuse.
    values.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests;
