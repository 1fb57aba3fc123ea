//! What the client reports to its user: one line per tunnel attached, one
//! per delivery (SPEC §1). The library emits [`Event`]s; the binary prints
//! them on stdout whatever the log level.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::Method;
use uuid::Uuid;

/// Something the user sees on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A profile's tunnel is up (at start and after every re-attach).
    Attached {
        /// The profile's name.
        profile: String,
        /// The URL to configure at the sender.
        webhook_url: String,
        /// Where its requests go.
        target: String,
    },
    /// A request went to the app and its answer went back.
    Delivered(Delivery),
}

/// One request forwarded to the local app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// When the request reached the client.
    pub at: SystemTime,
    /// The profile it arrived on.
    pub profile: String,
    /// The server's id for it.
    pub id: Option<Uuid>,
    /// The request's method.
    pub method: Method,
    /// The path the app saw, without the query.
    pub path: String,
    /// The app's status, or the one the sender got instead (502, 504).
    pub status: u16,
    /// Time from arrival to the end of the app's answer.
    pub elapsed: Duration,
    /// Request body bytes delivered to the app.
    pub bytes: u64,
    /// Whether it came from the server's offline queue.
    pub redelivered: bool,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Attached {
                profile,
                webhook_url,
                target,
            } => write!(f, "{profile:<8} {webhook_url} -> {target}"),
            Event::Delivered(delivery) => delivery.fmt(f),
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}ms {}B",
            humantime::format_rfc3339_seconds(self.at),
            self.profile,
            self.method,
            self.path,
            self.status,
            self.elapsed.as_millis(),
            self.bytes
        )?;
        if self.redelivered {
            f.write_str(" redelivered")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_in_the_spec() {
        let attached = Event::Attached {
            profile: "stripe".into(),
            webhook_url: "https://hooks.example.com/webhook/7d1e".into(),
            target: "http://localhost:4242/webhooks".into(),
        };
        assert_eq!(
            attached.to_string(),
            "stripe   https://hooks.example.com/webhook/7d1e -> http://localhost:4242/webhooks"
        );
        let delivery = Delivery {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_400_069),
            profile: "github".into(),
            id: None,
            method: Method::POST,
            path: "/github/push".into(),
            status: 200,
            elapsed: Duration::from_micros(3_400),
            bytes: 7324,
            redelivered: true,
        };
        assert_eq!(
            Event::Delivered(delivery).to_string(),
            "2026-12-04T16:01:09Z github POST /github/push 200 3ms 7324B redelivered"
        );
    }
}
