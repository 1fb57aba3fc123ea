//! The local app a profile forwards to, and the only URIs the client builds.

use std::fmt;
use std::str::FromStr;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// Where a profile's requests go: `http(s)://host[:port][/base/path]`.
///
/// Every request URI is built from the target's scheme and authority plus
/// the request's path suffix and query, so nothing in a request (an
/// absolute URI, a `Host` header, `@` or `//` in the path) can point the
/// client at another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    path: String,
    text: String,
}

impl Target {
    /// The URI for a request whose path after the channel is `suffix`.
    ///
    /// # Errors
    ///
    /// When the suffix is not an absolute path, holds a dot segment, or the
    /// result is not a valid URI.
    pub fn uri(&self, suffix: &str, query: Option<&str>) -> Result<Uri, String> {
        if !(suffix.is_empty() || suffix.starts_with('/')) {
            return Err("path suffix does not start with /".to_owned());
        }
        if suffix.split('/').any(is_dot_segment) {
            return Err("path has a dot segment".to_owned());
        }
        let path = self.path(suffix);
        let path_and_query = match query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let path_and_query = PathAndQuery::from_maybe_shared(path_and_query)
            .map_err(|_| "path or query is not a valid URI".to_owned())?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| "path or query is not a valid URI".to_owned())
    }

    /// The path the app sees for `suffix`: the target's path joined with it.
    pub fn path(&self, suffix: &str) -> String {
        let joined = if suffix.is_empty() {
            self.path.clone()
        } else {
            format!("{}{suffix}", self.path.trim_end_matches('/'))
        };
        if joined.is_empty() {
            "/".to_owned()
        } else {
            joined
        }
    }

    /// The `Host` header the app gets: the target's own.
    pub fn host_header(&self) -> HeaderValue {
        HeaderValue::from_str(self.authority.as_str())
            .expect("an authority is always a valid header value")
    }

    /// The target as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = |why: &str| {
            format!(
                "invalid target {text:?}: {why}; write it like \"http://localhost:3000/webhooks\""
            )
        };
        let uri: Uri = text.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| invalid("no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid("only http and https are supported"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user names and passwords are not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("a target cannot have a query"));
        }
        Ok(Target {
            scheme,
            authority,
            path: uri.path().to_owned(),
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Target {
        text.parse().unwrap()
    }

    #[test]
    fn paths_join_byte_for_byte() {
        let github = target("http://localhost:3000/github");
        let uri = github
            .uri("/a%2Fb/c;v=1", Some("x=1&x=2&y=&z=%2F+%20"))
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://localhost:3000/github/a%2Fb/c;v=1?x=1&x=2&y=&z=%2F+%20"
        );
        assert_eq!(github.path(""), "/github");
        assert_eq!(target("http://localhost:3000/github/").path(""), "/github/");
        assert_eq!(
            target("http://localhost:3000/github/").path("/push"),
            "/github/push"
        );
        assert_eq!(target("http://localhost:3000").path(""), "/");
        assert_eq!(target("http://localhost:3000").path("/x"), "/x");
        assert_eq!(
            github.uri("", Some("")).unwrap().to_string(),
            "http://localhost:3000/github?"
        );
    }

    #[test]
    fn nothing_in_a_request_changes_the_host() {
        let app = target("http://127.0.0.1:4242/hooks");
        for suffix in [
            "//evil.example/x",
            "/@evil.example",
            "/x@evil.example:80/y",
            "/http://evil.example/",
        ] {
            let uri = app.uri(suffix, None).unwrap();
            assert_eq!(
                uri.authority().unwrap().as_str(),
                "127.0.0.1:4242",
                "{suffix}"
            );
            assert_eq!(uri.scheme_str(), Some("http"));
        }
        for suffix in ["/../admin", "/a/./b", "/%2e%2e/x", "evil.example/x"] {
            assert!(app.uri(suffix, None).is_err(), "{suffix}");
        }
    }

    #[test]
    fn targets_must_be_plain_http_urls() {
        for bad in [
            "localhost:3000",
            "ftp://x/",
            "http://user:pw@localhost/",
            "http://x/?a=1",
            "/just/a/path",
        ] {
            let error = bad.parse::<Target>().unwrap_err();
            assert!(error.contains("invalid target"), "{error}");
        }
        assert_eq!(
            target("https://app.internal:8443/").host_header(),
            "app.internal:8443"
        );
    }
}
