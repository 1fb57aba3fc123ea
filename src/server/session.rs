//! One attached client: the WebSocket of a channel and its streams.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, trace, warn};
use uuid::Uuid;

use crate::link::Link;
use crate::protocol::{ClientMessage, Multiplexer};

/// Most requests in flight on one channel at once.
pub const MAX_STREAMS: usize = 1024;

/// The WebSocket of an attached client, as tungstenite sees it.
pub type ServerSocket = WebSocketStream<TokioIo<Upgraded>>;

/// Settings for server-side WebSockets: a small read buffer (a server holds
/// thousands of mostly idle sockets) and messages no larger than a head.
pub fn socket_config(max_header_bytes: u64) -> WebSocketConfig {
    let max_message = (max_header_bytes as usize * 2).max(1 << 20);
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// One attached client connection.
#[derive(Debug)]
pub struct Session {
    channel: Uuid,
    peer: Option<SocketAddr>,
    mux: Multiplexer,
    link: Link,
    ended: CancellationToken,
}

impl Session {
    /// A session for `channel`, before its WebSocket is up.
    pub fn new(channel: Uuid, peer: Option<SocketAddr>, mux: Multiplexer) -> Self {
        Session {
            channel,
            peer,
            mux,
            link: Link::new(),
            ended: CancellationToken::new(),
        }
    }

    /// Resolves once the session has ended (or never started).
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    /// Marks the session as ended: its tasks stop.
    pub fn end(&self) {
        self.ended.cancel();
    }

    /// The channel this session holds.
    pub fn channel(&self) -> Uuid {
        self.channel
    }

    /// The stream table of this connection.
    pub fn mux(&self) -> &Multiplexer {
        &self.mux
    }

    /// The WebSocket's liveness and close control.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Closes the WebSocket with `code` (1001 on shutdown: "reconnect elsewhere").
    pub fn close(&self, code: CloseCode) {
        self.link.close(code);
    }

    /// Runs the session until the client goes away, falls silent, or the
    /// session is closed; then fails its open streams.
    pub async fn run(
        self: Arc<Self>,
        socket: ServerSocket,
        frames: mpsc::UnboundedReceiver<Bytes>,
    ) {
        let ended = self
            .link
            .run(socket, frames, |bytes| self.handle_binary(bytes))
            .await;
        self.mux.close();
        self.end();
        info!(channel = %self.channel, peer = ?self.peer, reason = %ended, "client detached");
    }

    fn handle_binary(&self, bytes: Bytes) -> Result<(), String> {
        let message = ClientMessage::decode(bytes).map_err(|error| {
            warn!(channel = %self.channel, error = %error, "undecodable frame from client");
            error.to_string()
        })?;
        trace!(channel = %self.channel, kind = message.kind(), "frame from client");
        self.mux
            .receive_client_message(message)
            .map_err(|error| error.to_string())
    }
}
