//! The tunnel's wire protocol: frames, heads, streams and credit, version.
//!
//! One WebSocket carries one channel. Each webhook request is a *stream*:
//! the server opens it with a REQUEST frame, sends the body as DATA frames
//! and an END; the client answers with a RESPONSE frame, DATA and END. Many
//! streams are in flight at once, and each direction of each stream has its
//! own credit window, so a slow app or a slow sender holds up only its own
//! stream and memory stays bounded. The full description, byte by byte, is
//! in `docs/PROTOCOL.md`.

mod frame;
mod head;
mod mux;

pub use frame::{
    ClientMessage, FRAME_HEADER_LEN, MAX_DATA_LEN, ResetCode, ServerMessage, StreamFrame, StreamId,
};
pub use head::{RequestHead, ResponseHead};
pub use mux::{
    ConnectionError, INITIAL_WINDOW, InboundBody, IncomingRequest, Multiplexer, OpenError,
    OutgoingRequest, ResponseWaiter, Side, StreamError, StreamHandle,
};

/// The `Sec-WebSocket-Protocol` name of protocol version 1.
pub const PROTOCOL_V1: &str = "wow.v1";

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame ended before a field it announced.
    #[error("truncated frame")]
    Truncated,
    /// A field holds a value that cannot be right.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A frame kind that only the other direction may send.
    #[error("frame kind {0:#04x} sent in the wrong direction")]
    WrongDirection(u8),
}

/// Picks the protocol version from a client's `Sec-WebSocket-Protocol`
/// header: none sent means version 1; otherwise the first offered version
/// this server speaks.
///
/// Returns `Ok(None)` when no header was sent (answer without one),
/// `Ok(Some(name))` for the chosen version to echo back, and `Err` with the
/// offered list when the server speaks none of them.
///
/// ```
/// use wow::protocol::{negotiate_version, PROTOCOL_V1};
///
/// assert_eq!(negotiate_version(None), Ok(None));
/// assert_eq!(negotiate_version(Some("wow.v9, wow.v1")), Ok(Some(PROTOCOL_V1)));
/// assert!(negotiate_version(Some("wow.v9")).is_err());
/// ```
///
/// # Errors
///
/// The offered list, when it names no version this side speaks.
pub fn negotiate_version(offered: Option<&str>) -> Result<Option<&'static str>, String> {
    let Some(offered) = offered else {
        return Ok(None);
    };
    let speaks_v1 = offered
        .split(',')
        .map(str::trim)
        .any(|name| name == PROTOCOL_V1);
    if speaks_v1 {
        Ok(Some(PROTOCOL_V1))
    } else {
        Err(offered.to_owned())
    }
}
