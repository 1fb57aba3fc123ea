//! Request and response heads, encoded as a list of tagged fields.
//!
//! A head is a sequence of `tag: u8, length: u32 (big-endian), value`
//! fields. Headers are one field each, in the order they arrived, so
//! repeated headers keep their order. Fields with a tag this version does
//! not know are skipped, which lets a newer peer add fields without a new
//! protocol version.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use uuid::Uuid;

use super::ProtocolError;

const TAG_METHOD: u8 = 0x01;
const TAG_PATH: u8 = 0x02;
const TAG_QUERY: u8 = 0x03;
const TAG_HEADER: u8 = 0x04;
const TAG_DELIVERY_ID: u8 = 0x05;
const TAG_RECEIVED_AT: u8 = 0x06;
const TAG_REDELIVERED: u8 = 0x07;
const TAG_STATUS: u8 = 0x10;

/// Size of a field's tag and length prefix, in bytes.
const FIELD_PREFIX_LEN: usize = 5;

/// Header maps are sized up front for at most this many headers (hyper's
/// own limit on the server is 256); a head with more grows the map.
const PRESIZED_HEADERS: usize = 256;

/// Everything about a webhook request except its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The sender's method, whatever it is.
    pub method: Method,
    /// The raw path after `/webhook/{channel_id}`: empty or starting with
    /// `/`, percent-encoding untouched.
    pub path: String,
    /// The raw query string without its `?`; `None` when the request had no
    /// `?`, `Some("")` when it had an empty one.
    pub query: Option<String>,
    /// End-to-end headers in arrival order (the server has already removed
    /// hop-by-hop headers and added `X-Forwarded-*`).
    pub headers: HeaderMap,
    /// The id the server gave this delivery.
    pub delivery_id: Option<Uuid>,
    /// When the server received the request, in milliseconds since the Unix epoch.
    pub received_at_ms: Option<u64>,
    /// True when the delivery comes from the server's offline queue.
    pub redelivered: bool,
}

/// Status and headers of the local app's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The app's status code.
    pub status: StatusCode,
    /// The app's end-to-end headers, repeated ones (`Set-Cookie`) in order.
    pub headers: HeaderMap,
}

impl RequestHead {
    /// A head with the given method and path, and nothing else set.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        RequestHead {
            method,
            path: path.into(),
            query: None,
            headers: HeaderMap::new(),
            delivery_id: None,
            received_at_ms: None,
            redelivered: false,
        }
    }

    /// Bytes [`RequestHead::encode`] writes, so the buffer grows once.
    pub(crate) fn encoded_len(&self) -> usize {
        let method = FIELD_PREFIX_LEN + self.method.as_str().len();
        let path = FIELD_PREFIX_LEN + self.path.len();
        let query = self
            .query
            .as_ref()
            .map_or(0, |query| FIELD_PREFIX_LEN + query.len());
        let delivery = self.delivery_id.map_or(0, |_| FIELD_PREFIX_LEN + 16);
        let received = self.received_at_ms.map_or(0, |_| FIELD_PREFIX_LEN + 8);
        let redelivered = if self.redelivered {
            FIELD_PREFIX_LEN
        } else {
            0
        };
        method + path + query + headers_len(&self.headers) + delivery + received + redelivered
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        put_field(buf, TAG_METHOD, self.method.as_str().as_bytes());
        put_field(buf, TAG_PATH, self.path.as_bytes());
        if let Some(query) = &self.query {
            put_field(buf, TAG_QUERY, query.as_bytes());
        }
        put_headers(buf, &self.headers);
        if let Some(id) = self.delivery_id {
            put_field(buf, TAG_DELIVERY_ID, id.as_bytes());
        }
        if let Some(at) = self.received_at_ms {
            put_field(buf, TAG_RECEIVED_AT, &at.to_be_bytes());
        }
        if self.redelivered {
            put_field(buf, TAG_REDELIVERED, &[]);
        }
    }

    pub(crate) fn decode(buf: Bytes) -> Result<Self, ProtocolError> {
        let mut method = None;
        let mut head = RequestHead::new(Method::GET, String::new());
        head.headers = HeaderMap::with_capacity(count_headers(&buf));
        let mut has_path = false;
        for field in Fields(buf) {
            let (tag, value) = field?;
            match tag {
                TAG_METHOD => {
                    let parsed = Method::from_bytes(&value)
                        .map_err(|_| ProtocolError::Malformed("invalid method"))?;
                    method = Some(parsed);
                }
                TAG_PATH => {
                    head.path = ascii(value, "path")?;
                    has_path = true;
                }
                TAG_QUERY => head.query = Some(ascii(value, "query")?),
                TAG_HEADER => append_header(&mut head.headers, value)?,
                TAG_DELIVERY_ID => {
                    let id = Uuid::from_slice(&value)
                        .map_err(|_| ProtocolError::Malformed("delivery id is not 16 bytes"))?;
                    head.delivery_id = Some(id);
                }
                TAG_RECEIVED_AT => head.received_at_ms = Some(be_u64(&value)?),
                TAG_REDELIVERED => head.redelivered = true,
                _ => {}
            }
        }
        head.method = method.ok_or(ProtocolError::Malformed("request head without method"))?;
        if !has_path {
            return Err(ProtocolError::Malformed("request head without path"));
        }
        Ok(head)
    }
}

impl ResponseHead {
    /// A head with the given status and no headers.
    pub fn new(status: StatusCode) -> Self {
        ResponseHead {
            status,
            headers: HeaderMap::new(),
        }
    }

    /// Bytes [`ResponseHead::encode`] writes, so the buffer grows once.
    pub(crate) fn encoded_len(&self) -> usize {
        FIELD_PREFIX_LEN + 2 + headers_len(&self.headers)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        put_field(buf, TAG_STATUS, &self.status.as_u16().to_be_bytes());
        put_headers(buf, &self.headers);
    }

    pub(crate) fn decode(buf: Bytes) -> Result<Self, ProtocolError> {
        let mut status = None;
        let mut headers = HeaderMap::with_capacity(count_headers(&buf));
        for field in Fields(buf) {
            let (tag, mut value) = field?;
            match tag {
                TAG_STATUS if value.len() == 2 => {
                    let parsed = StatusCode::from_u16(value.get_u16())
                        .map_err(|_| ProtocolError::Malformed("invalid status"))?;
                    status = Some(parsed);
                }
                TAG_STATUS => return Err(ProtocolError::Malformed("status is not 2 bytes")),
                TAG_HEADER => append_header(&mut headers, value)?,
                _ => {}
            }
        }
        let status = status.ok_or(ProtocolError::Malformed("response head without status"))?;
        Ok(ResponseHead { status, headers })
    }
}

fn put_field(buf: &mut BytesMut, tag: u8, value: &[u8]) {
    buf.put_u8(tag);
    buf.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
    buf.put_slice(value);
}

fn put_headers(buf: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        let len = 2 + name.len() + value.len();
        buf.put_u8(TAG_HEADER);
        buf.put_u32(len as u32);
        // Header names are at most 64 KiB by construction (hyper's head limit).
        buf.put_u16(name.len() as u16);
        buf.put_slice(name);
        buf.put_slice(value.as_bytes());
    }
}

/// Bytes the header fields of `headers` take.
fn headers_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| FIELD_PREFIX_LEN + 2 + name.as_str().len() + value.len())
        .sum()
}

/// How many header fields an encoded head holds: the map is then sized
/// once instead of growing (and rehashing) as headers arrive.
fn count_headers(buf: &Bytes) -> usize {
    let mut rest = &buf[..];
    let mut count = 0;
    while rest.len() >= FIELD_PREFIX_LEN {
        let tag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        count += usize::from(tag == TAG_HEADER);
        rest = rest
            .get(len.saturating_add(FIELD_PREFIX_LEN)..)
            .unwrap_or_default();
    }
    count.min(PRESIZED_HEADERS)
}

fn append_header(headers: &mut HeaderMap, mut value: Bytes) -> Result<(), ProtocolError> {
    if value.remaining() < 2 {
        return Err(ProtocolError::Truncated);
    }
    let name_len = usize::from(value.get_u16());
    if value.remaining() < name_len {
        return Err(ProtocolError::Truncated);
    }
    let name = HeaderName::from_bytes(&value.split_to(name_len))
        .map_err(|_| ProtocolError::Malformed("invalid header name"))?;
    let value = HeaderValue::from_maybe_shared(value)
        .map_err(|_| ProtocolError::Malformed("invalid header value"))?;
    // A map holds 32,768 entries at most; past that, refuse rather than panic.
    headers
        .try_append(name, value)
        .map_err(|_| ProtocolError::Malformed("too many headers"))?;
    Ok(())
}

fn ascii(value: Bytes, what: &'static str) -> Result<String, ProtocolError> {
    if !value.is_ascii() {
        return Err(ProtocolError::Malformed(what));
    }
    String::from_utf8(value.to_vec()).map_err(|_| ProtocolError::Malformed(what))
}

fn be_u64(value: &[u8]) -> Result<u64, ProtocolError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| ProtocolError::Malformed("timestamp is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Iterates over the `(tag, value)` fields of an encoded head.
struct Fields(Bytes);

impl Iterator for Fields {
    type Item = Result<(u8, Bytes), ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        if self.0.remaining() < FIELD_PREFIX_LEN {
            self.0.clear();
            return Some(Err(ProtocolError::Truncated));
        }
        let tag = self.0.get_u8();
        let len = self.0.get_u32() as usize;
        if self.0.remaining() < len {
            self.0.clear();
            return Some(Err(ProtocolError::Truncated));
        }
        Some(Ok((tag, self.0.split_to(len))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> RequestHead {
        let mut head = RequestHead::new(Method::POST, "/a%2Fb/c;v=1");
        head.query = Some("x=1&x=2&y=&z=%2F+%20".into());
        head.headers
            .append("x-custom", HeaderValue::from_static("one"));
        head.headers
            .append("content-type", HeaderValue::from_static("application/json"));
        head.headers
            .append("x-custom", HeaderValue::from_static("two"));
        head.headers
            .append("x-binary", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        head.delivery_id = Some(Uuid::from_u128(0x1234));
        head.received_at_ms = Some(1_764_000_000_123);
        head.redelivered = true;
        head
    }

    fn encoded_request(head: &RequestHead) -> Bytes {
        let mut buf = BytesMut::new();
        head.encode(&mut buf);
        buf.freeze()
    }

    #[test]
    fn request_heads_round_trip_with_repeated_headers_in_order() {
        let head = sample_request();
        let decoded = RequestHead::decode(encoded_request(&head)).unwrap();
        assert_eq!(decoded, head);
        let custom: Vec<_> = decoded.headers.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["one", "two"]);
    }

    #[test]
    fn empty_query_differs_from_no_query() {
        let mut head = RequestHead::new(Method::GET, "");
        assert_eq!(
            RequestHead::decode(encoded_request(&head)).unwrap().query,
            None
        );
        head.query = Some(String::new());
        assert_eq!(
            RequestHead::decode(encoded_request(&head)).unwrap().query,
            Some(String::new())
        );
    }

    #[test]
    fn response_heads_keep_every_set_cookie() {
        let mut head = ResponseHead::new(StatusCode::CREATED);
        head.headers
            .append("set-cookie", HeaderValue::from_static("a=1"));
        head.headers
            .append("set-cookie", HeaderValue::from_static("b=2"));
        let mut buf = BytesMut::new();
        head.encode(&mut buf);
        assert_eq!(ResponseHead::decode(buf.freeze()).unwrap(), head);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut buf = BytesMut::new();
        put_field(&mut buf, 0x7e, b"from a newer peer");
        ResponseHead::new(StatusCode::NO_CONTENT).encode(&mut buf);
        let head = ResponseHead::decode(buf.freeze()).unwrap();
        assert_eq!(head.status, StatusCode::NO_CONTENT);
    }

    #[test]
    fn every_truncation_of_a_head_is_an_error_or_a_valid_prefix() {
        let full = encoded_request(&sample_request());
        for cut in 0..full.len() {
            // A cut on a field boundary decodes to a shorter head or fails
            // for a missing field; anything else must fail, never panic.
            let _ = RequestHead::decode(full.slice(..cut));
        }
        assert!(RequestHead::decode(full.slice(..full.len() - 1)).is_err());
    }

    #[test]
    fn header_fields_are_counted_without_trusting_lengths() {
        let full = encoded_request(&sample_request());
        assert_eq!(count_headers(&full), 4);
        for cut in 0..full.len() {
            assert!(count_headers(&full.slice(..cut)) <= 4);
        }
        let mut lying = BytesMut::new();
        lying.put_u8(TAG_HEADER);
        lying.put_u32(u32::MAX);
        assert_eq!(count_headers(&lying.freeze()), 1);
    }

    #[test]
    fn a_head_with_more_headers_than_a_map_holds_is_refused() {
        let mut buf = BytesMut::new();
        ResponseHead::new(StatusCode::OK).encode(&mut buf);
        // Distinct names: repeated values of one name do not fill a map.
        for index in 0..40_000 {
            let name = format!("h{index}");
            buf.put_u8(TAG_HEADER);
            buf.put_u32(2 + name.len() as u32 + 1);
            buf.put_u16(name.len() as u16);
            buf.put_slice(name.as_bytes());
            buf.put_u8(b'v');
        }
        let decoded = ResponseHead::decode(buf.freeze());
        assert!(
            matches!(decoded, Err(ProtocolError::Malformed("too many headers"))),
            "a head of 40,000 headers was accepted"
        );
    }

    #[test]
    fn encoded_lengths_are_exact() {
        let head = sample_request();
        assert_eq!(encoded_request(&head).len(), head.encoded_len());
        let mut answer = ResponseHead::new(StatusCode::OK);
        answer
            .headers
            .append("content-type", HeaderValue::from_static("text/plain"));
        let mut buf = BytesMut::new();
        answer.encode(&mut buf);
        assert_eq!(buf.len(), answer.encoded_len());
    }

    #[test]
    fn heads_without_required_fields_are_refused() {
        let mut buf = BytesMut::new();
        put_field(&mut buf, TAG_PATH, b"/x");
        assert!(RequestHead::decode(buf.freeze()).is_err());
        assert!(ResponseHead::decode(Bytes::new()).is_err());
    }
}
