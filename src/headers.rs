//! Which headers cross the tunnel: hop-by-hop headers stop at each hop,
//! forwarding headers are only believed from trusted proxies.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus `Expect`, which the server has already answered for the sender.
/// A `static`: a `const` array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-connection"),
];

/// Headers through which a request claims where it came from. A sender can
/// write anything there, so they are kept only when a trusted proxy sent
/// the request.
pub static FORWARDING: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names, and `Expect`; the others keep their order.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    retain(headers, |name| {
        !(HOP_BY_HOP.contains(name)
            || named.contains(name)
            || name == header::EXPECT
            || name.as_str().starts_with("proxy-"))
    });
}

/// Keeps only the headers `keep` accepts, in their original order.
///
/// `HeaderMap::remove` moves the last header into the removed one's place,
/// which would reorder what the sender sent; this rebuilds the map instead
/// (and does nothing when there is nothing to remove).
pub fn retain(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    if headers.keys().all(&keep) {
        return;
    }
    let old = std::mem::take(headers);
    headers.reserve(old.len());
    let mut current: Option<HeaderName> = None;
    for (name, value) in old {
        if let Some(name) = name {
            current = Some(name);
        }
        if let Some(name) = current.as_ref().filter(|name| keep(name)) {
            headers.append(name.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn retaining_keeps_the_order_of_what_is_left() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("a", "1"),
            ("host", "x"),
            ("b", "2"),
            ("a", "3"),
            ("c", "4"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        retain(&mut headers, |name| name != header::HOST);
        let left: Vec<_> = headers
            .iter()
            .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
            .collect();
        assert_eq!(left, ["a=1", "a=3", "b=2", "c=4"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_end_to_end_ones_stay() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-foo", "bar"),
            ("x-private", "hop"),
            ("expect", "100-continue"),
            ("x-hub-signature-256", "sha256=abc"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("content-length", "12"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            left,
            [
                ("x-hub-signature-256", "sha256=abc"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("content-length", "12"),
            ]
        );
    }
}
