//! Frames: the messages of the tunnel, one per WebSocket binary message.
//!
//! Every frame starts with a one-byte kind and a big-endian `u32` stream id;
//! what follows depends on the kind (see `docs/PROTOCOL.md`). The two
//! directions speak different sets of frames, so each has its own enum and
//! decoding a frame that only the other side may send is a protocol error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ProtocolError;
use super::head::{RequestHead, ResponseHead};

/// Identifies one request/response exchange within a WebSocket. Stream ids
/// are chosen by the server; `0` is reserved for the connection itself.
pub type StreamId = u32;

/// Largest body chunk one DATA frame carries, in bytes (64 KiB).
pub const MAX_DATA_LEN: usize = 64 * 1024;

/// Size of the common frame header: kind (1 byte) and stream id (4 bytes).
pub const FRAME_HEADER_LEN: usize = 5;

/// Longest reason text a RESET frame carries, in bytes.
const MAX_REASON_LEN: usize = 256;

const KIND_REQUEST: u8 = 0x01;
const KIND_RESPONSE: u8 = 0x02;
const KIND_DATA: u8 = 0x03;
const KIND_END: u8 = 0x04;
const KIND_RESET: u8 = 0x05;
const KIND_CREDIT: u8 = 0x06;
const KIND_GO_AWAY: u8 = 0x07;

/// What the server sends to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Opens a stream: a webhook request arrived for the channel.
    Request {
        /// The new stream, never used before on this connection.
        stream: StreamId,
        /// Method, path suffix, query and headers of the request.
        head: RequestHead,
    },
    /// Body flow on an open stream (request body, credit for the response).
    Stream(StreamFrame),
    /// The server is shutting down: finish open streams, expect no new ones,
    /// and reconnect (to another replica) as soon as the socket closes.
    GoAway,
}

/// What the client sends to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// The local app's answer to the request on `stream`.
    Response {
        /// The stream the request arrived on.
        stream: StreamId,
        /// Status and headers of the app's response.
        head: ResponseHead,
    },
    /// Body flow on an open stream (response body, credit for the request).
    Stream(StreamFrame),
}

/// Frames both directions use to move a body and control its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// A chunk of body bytes: never empty, at most [`MAX_DATA_LEN`], and
    /// only as much as the receiver has granted credit for.
    Data {
        /// The stream the bytes belong to.
        stream: StreamId,
        /// The bytes, exactly as read from the body.
        data: Bytes,
    },
    /// The sender's body is complete; nothing follows in this direction.
    End {
        /// The stream whose body ended.
        stream: StreamId,
    },
    /// Abandons the stream in both directions.
    Reset {
        /// The stream to abandon.
        stream: StreamId,
        /// Why, as a code the other side maps to an HTTP status.
        code: ResetCode,
        /// Human-readable detail for the operator's log; never shown to senders.
        reason: String,
    },
    /// Lets the other side send `increment` more body bytes on the stream.
    Credit {
        /// The stream the credit is for.
        stream: StreamId,
        /// How many more bytes may be sent.
        increment: u32,
    },
}

impl ServerMessage {
    /// The frame's kind, for logs (which never show heads or bodies).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Request { .. } => "REQUEST",
            ServerMessage::Stream(frame) => frame.kind(),
            ServerMessage::GoAway => "GOAWAY",
        }
    }
}

impl ClientMessage {
    /// The frame's kind, for logs (which never show heads or bodies).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Response { .. } => "RESPONSE",
            ClientMessage::Stream(frame) => frame.kind(),
        }
    }
}

impl StreamFrame {
    /// The frame's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamFrame::Data { .. } => "DATA",
            StreamFrame::End { .. } => "END",
            StreamFrame::Reset { .. } => "RESET",
            StreamFrame::Credit { .. } => "CREDIT",
        }
    }

    /// The stream this frame belongs to.
    pub fn stream(&self) -> StreamId {
        match self {
            StreamFrame::Data { stream, .. }
            | StreamFrame::End { stream }
            | StreamFrame::Reset { stream, .. }
            | StreamFrame::Credit { stream, .. } => *stream,
        }
    }
}

/// Why a stream was reset; the receiving side turns it into a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCode {
    /// The side that reset no longer wants the stream (sender hung up).
    Cancel,
    /// A frame on the stream broke the protocol.
    Protocol,
    /// The peer sent more body bytes than it had credit for.
    FlowControl,
    /// The client could not connect to the local app (502).
    AppUnreachable,
    /// The local app did not answer within the client's timeout (504).
    AppTimeout,
    /// The app failed while sending its response (the sender sees an error).
    AppFailed,
    /// The request body grew past the server's `max_body` (413).
    BodyTooLarge,
    /// The client refused to forward the request as unsafe (400).
    Refused,
    /// The client is shutting down and did not start the request; it may be retried.
    Unavailable,
    /// Something else went wrong on the resetting side.
    Internal,
}

impl ResetCode {
    fn to_wire(self) -> u16 {
        match self {
            ResetCode::Cancel => 0,
            ResetCode::Protocol => 1,
            ResetCode::FlowControl => 2,
            ResetCode::AppUnreachable => 3,
            ResetCode::AppTimeout => 4,
            ResetCode::AppFailed => 5,
            ResetCode::BodyTooLarge => 6,
            ResetCode::Refused => 7,
            ResetCode::Unavailable => 8,
            ResetCode::Internal => 9,
        }
    }

    /// Unknown codes (from a newer peer) read as `Internal`.
    fn from_wire(code: u16) -> Self {
        match code {
            0 => ResetCode::Cancel,
            1 => ResetCode::Protocol,
            2 => ResetCode::FlowControl,
            3 => ResetCode::AppUnreachable,
            4 => ResetCode::AppTimeout,
            5 => ResetCode::AppFailed,
            6 => ResetCode::BodyTooLarge,
            7 => ResetCode::Refused,
            8 => ResetCode::Unavailable,
            _ => ResetCode::Internal,
        }
    }
}

impl ServerMessage {
    /// Encodes the message as the payload of one WebSocket binary message.
    pub fn encode(&self) -> Bytes {
        match self {
            ServerMessage::Request { stream, head } => encode_request(*stream, head).freeze(),
            ServerMessage::Stream(frame) => frame.encode(),
            ServerMessage::GoAway => header(KIND_GO_AWAY, 0, 0).freeze(),
        }
    }

    /// Decodes one WebSocket binary message sent by a server.
    ///
    /// # Errors
    ///
    /// Fails when the frame is truncated, malformed, or of a kind only a
    /// client may send.
    pub fn decode(mut buf: Bytes) -> Result<Self, ProtocolError> {
        let (kind, stream) = read_header(&mut buf)?;
        match kind {
            KIND_REQUEST => Ok(ServerMessage::Request {
                stream,
                head: RequestHead::decode(buf)?,
            }),
            KIND_GO_AWAY => Ok(ServerMessage::GoAway),
            KIND_RESPONSE => Err(ProtocolError::WrongDirection(kind)),
            _ => StreamFrame::decode(kind, stream, buf).map(ServerMessage::Stream),
        }
    }
}

impl ClientMessage {
    /// Encodes the message as the payload of one WebSocket binary message.
    pub fn encode(&self) -> Bytes {
        match self {
            ClientMessage::Response { stream, head } => encode_response(*stream, head),
            ClientMessage::Stream(frame) => frame.encode(),
        }
    }

    /// Decodes one WebSocket binary message sent by a client.
    ///
    /// # Errors
    ///
    /// Fails when the frame is truncated, malformed, or of a kind only the
    /// server may send.
    pub fn decode(mut buf: Bytes) -> Result<Self, ProtocolError> {
        let (kind, stream) = read_header(&mut buf)?;
        match kind {
            KIND_RESPONSE => Ok(ClientMessage::Response {
                stream,
                head: ResponseHead::decode(buf)?,
            }),
            KIND_REQUEST | KIND_GO_AWAY => Err(ProtocolError::WrongDirection(kind)),
            _ => StreamFrame::decode(kind, stream, buf).map(ClientMessage::Stream),
        }
    }
}

impl StreamFrame {
    /// Encodes the frame as the payload of one WebSocket binary message.
    pub fn encode(&self) -> Bytes {
        match self {
            StreamFrame::Data { stream, data } => {
                let mut buf = header(KIND_DATA, *stream, data.len());
                buf.put_slice(data);
                buf.freeze()
            }
            StreamFrame::End { stream } => header(KIND_END, *stream, 0).freeze(),
            StreamFrame::Reset {
                stream,
                code,
                reason,
            } => {
                let reason = truncate_utf8(reason, MAX_REASON_LEN);
                let mut buf = header(KIND_RESET, *stream, 2 + reason.len());
                buf.put_u16(code.to_wire());
                buf.put_slice(reason.as_bytes());
                buf.freeze()
            }
            StreamFrame::Credit { stream, increment } => {
                let mut buf = header(KIND_CREDIT, *stream, 4);
                buf.put_u32(*increment);
                buf.freeze()
            }
        }
    }

    fn decode(kind: u8, stream: StreamId, mut buf: Bytes) -> Result<Self, ProtocolError> {
        if stream == 0 {
            return Err(ProtocolError::Malformed("stream frame on stream 0"));
        }
        let frame = match kind {
            KIND_DATA if buf.is_empty() => return Err(ProtocolError::Malformed("empty DATA")),
            KIND_DATA if buf.len() > MAX_DATA_LEN => {
                return Err(ProtocolError::Malformed("DATA larger than the maximum"));
            }
            KIND_DATA => StreamFrame::Data { stream, data: buf },
            KIND_END => StreamFrame::End { stream },
            KIND_RESET => {
                if buf.remaining() < 2 {
                    return Err(ProtocolError::Truncated);
                }
                let code = ResetCode::from_wire(buf.get_u16());
                let reason = String::from_utf8_lossy(&buf).into_owned();
                StreamFrame::Reset {
                    stream,
                    code,
                    reason,
                }
            }
            KIND_CREDIT => {
                if buf.remaining() != 4 {
                    return Err(ProtocolError::Malformed("CREDIT payload is not 4 bytes"));
                }
                let increment = buf.get_u32();
                if increment == 0 {
                    return Err(ProtocolError::Malformed("CREDIT of zero"));
                }
                StreamFrame::Credit { stream, increment }
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        Ok(frame)
    }
}

/// A REQUEST frame for a head the caller keeps (no copy of the head).
/// The stream id can still be set with [`set_stream`].
pub(crate) fn encode_request(stream: StreamId, head: &RequestHead) -> BytesMut {
    let mut buf = header(KIND_REQUEST, stream, head.encoded_len());
    head.encode(&mut buf);
    buf
}

/// A RESPONSE frame for a head the caller keeps (no copy of the head).
pub(crate) fn encode_response(stream: StreamId, head: &ResponseHead) -> Bytes {
    let mut buf = header(KIND_RESPONSE, stream, head.encoded_len());
    head.encode(&mut buf);
    buf.freeze()
}

/// Writes the stream id into an encoded frame, so that a frame can be
/// encoded before its id is known.
pub(crate) fn set_stream(frame: &mut BytesMut, stream: StreamId) {
    if let Some(id) = frame.get_mut(1..FRAME_HEADER_LEN) {
        id.copy_from_slice(&stream.to_be_bytes());
    }
}

fn header(kind: u8, stream: StreamId, payload_hint: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_LEN + payload_hint);
    buf.put_u8(kind);
    buf.put_u32(stream);
    buf
}

fn read_header(buf: &mut Bytes) -> Result<(u8, StreamId), ProtocolError> {
    if buf.remaining() < FRAME_HEADER_LEN {
        return Err(ProtocolError::Truncated);
    }
    Ok((buf.get_u8(), buf.get_u32()))
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_server(message: ServerMessage) {
        assert_eq!(ServerMessage::decode(message.encode()).unwrap(), message);
    }

    fn round_trip_client(message: ClientMessage) {
        assert_eq!(ClientMessage::decode(message.encode()).unwrap(), message);
    }

    #[test]
    fn stream_frames_round_trip_both_ways() {
        let frames = [
            StreamFrame::Data {
                stream: 7,
                data: Bytes::from_static(b"\x00\xff binary"),
            },
            StreamFrame::End { stream: 7 },
            StreamFrame::Reset {
                stream: 9,
                code: ResetCode::AppTimeout,
                reason: "app slower than 10s".into(),
            },
            StreamFrame::Credit {
                stream: u32::MAX,
                increment: 65536,
            },
        ];
        for frame in frames {
            round_trip_server(ServerMessage::Stream(frame.clone()));
            round_trip_client(ClientMessage::Stream(frame));
        }
        round_trip_server(ServerMessage::GoAway);
    }

    #[test]
    fn heads_encoded_by_reference_match_the_messages() {
        let mut head = RequestHead::new(http::Method::POST, "/hook");
        head.headers
            .append("x-github-event", http::HeaderValue::from_static("push"));
        let mut frame = encode_request(0, &head);
        assert_eq!(frame.len(), FRAME_HEADER_LEN + head.encoded_len());
        set_stream(&mut frame, 42);
        let message = ServerMessage::Request { stream: 42, head };
        assert_eq!(frame.freeze(), message.encode());

        let mut answer = ResponseHead::new(http::StatusCode::ACCEPTED);
        answer
            .headers
            .append("set-cookie", http::HeaderValue::from_static("a=1"));
        let frame = encode_response(7, &answer);
        assert_eq!(frame.len(), FRAME_HEADER_LEN + answer.encoded_len());
        let message = ClientMessage::Response {
            stream: 7,
            head: answer,
        };
        assert_eq!(frame, message.encode());
    }

    #[test]
    fn frames_of_the_other_direction_are_refused() {
        let response = ClientMessage::Response {
            stream: 1,
            head: ResponseHead::new(http::StatusCode::OK),
        };
        assert!(matches!(
            ServerMessage::decode(response.encode()),
            Err(ProtocolError::WrongDirection(KIND_RESPONSE))
        ));
        assert!(matches!(
            ClientMessage::decode(ServerMessage::GoAway.encode()),
            Err(ProtocolError::WrongDirection(KIND_GO_AWAY))
        ));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: [&[u8]; 8] = [
            b"",
            b"\x03\x00\x00",
            b"\x03\x00\x00\x00\x01",
            b"\x06\x00\x00\x00\x01\x00\x00",
            b"\x06\x00\x00\x00\x01\x00\x00\x00\x00",
            b"\x05\x00\x00\x00\x01\x00",
            b"\x04\x00\x00\x00\x00",
            b"\x7f\x00\x00\x00\x01",
        ];
        for case in cases {
            let bytes = Bytes::copy_from_slice(case);
            assert!(ServerMessage::decode(bytes.clone()).is_err(), "{case:?}");
            assert!(ClientMessage::decode(bytes).is_err(), "{case:?}");
        }
    }

    #[test]
    fn oversized_data_is_refused() {
        let frame = StreamFrame::Data {
            stream: 1,
            data: Bytes::from(vec![0u8; MAX_DATA_LEN + 1]),
        };
        assert!(ClientMessage::decode(frame.encode()).is_err());
    }

    #[test]
    fn unknown_reset_codes_read_as_internal() {
        let bytes = Bytes::from_static(b"\x05\x00\x00\x00\x02\x01\x00why");
        let decoded = ClientMessage::decode(bytes).unwrap();
        assert_eq!(
            decoded,
            ClientMessage::Stream(StreamFrame::Reset {
                stream: 2,
                code: ResetCode::Internal,
                reason: "why".into()
            })
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(200);
        let frame = StreamFrame::Reset {
            stream: 1,
            code: ResetCode::Internal,
            reason,
        };
        let ClientMessage::Stream(StreamFrame::Reset { reason, .. }) =
            ClientMessage::decode(frame.encode()).unwrap()
        else {
            panic!("not a reset");
        };
        assert_eq!(reason.len(), MAX_REASON_LEN);
    }
}
