//! What the client needs to replay a webhook: its head with forwarding
//! headers, and the checks on its path.

use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

use super::http::RequestMeta;
use crate::headers::{FORWARDING, retain, strip_hop_by_hop};
use crate::protocol::RequestHead;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Builds what the client needs to replay the request (SPEC §5).
pub fn request_head(
    method: Method,
    suffix: &str,
    mut headers: HeaderMap,
    meta: &RequestMeta,
    trusted: bool,
    channel: Uuid,
) -> RequestHead {
    let host = headers.get(header::HOST).cloned().or_else(|| {
        meta.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut headers);
    retain(&mut headers, |name| {
        name != header::HOST && (trusted || !FORWARDING.contains(name))
    });
    add_forwarding(&mut headers, meta, host, channel);

    let mut head = RequestHead::new(method, suffix);
    head.query = meta.uri.query().map(str::to_owned);
    head.headers = headers;
    head.delivery_id = Some(Uuid::new_v4());
    head.received_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|since| since.as_millis() as u64);
    head
}

/// Adds `X-Forwarded-*` so the app can rebuild the URL the sender called,
/// appending to what a trusted proxy already said.
fn add_forwarding(
    headers: &mut HeaderMap,
    meta: &RequestMeta,
    host: Option<HeaderValue>,
    channel: Uuid,
) {
    let peer = meta.peer.ip().to_canonical().to_string();
    let chain: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let forwarded_for = if chain.is_empty() {
        peer
    } else {
        format!("{}, {peer}", chain.join(", "))
    };
    set_header(headers, X_FORWARDED_FOR, &forwarded_for);

    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = host.filter(|_| !headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let outer_prefix = headers
        .get(&X_FORWARDED_PREFIX)
        .and_then(|value| value.to_str().ok())
        .map(|prefix| prefix.trim_end_matches('/').to_owned())
        .unwrap_or_default();
    set_header(
        headers,
        X_FORWARDED_PREFIX,
        &format!("{outer_prefix}/webhook/{channel}"),
    );
}

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The raw path after `/webhook/{id}`: empty or starting with `/`.
pub fn path_suffix(path: &str) -> &str {
    let rest = path.strip_prefix("/webhook/").unwrap_or("");
    rest.find('/').map_or("", |slash| &rest[slash..])
}

/// Whether a path has a `.` or `..` segment, plain or percent-encoded; URL
/// normalisation would resolve those into another path than the sender's.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suffix_is_everything_after_the_channel_segment() {
        let id = "7d1e0c2a-0000-4000-8000-000000000000";
        assert_eq!(path_suffix(&format!("/webhook/{id}")), "");
        assert_eq!(path_suffix(&format!("/webhook/{id}/")), "/");
        assert_eq!(
            path_suffix(&format!("/webhook/{id}/a%2Fb/c;v=1")),
            "/a%2Fb/c;v=1"
        );
        assert_eq!(
            path_suffix(&format!("/webhook/{id}//evil.com/x")),
            "//evil.com/x"
        );
    }

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        for path in ["/..", "/a/../b", "/.", "/%2e%2E/x", "/.%2e", "/%2E"] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["", "/", "/a..b", "/...", "/.well-known/x", "/a%2Fb"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }
}
