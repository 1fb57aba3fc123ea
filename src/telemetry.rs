//! Prometheus metrics: names, the recorder, and rendering.
//!
//! Both daemons record through the `metrics` crate into one process-wide
//! Prometheus recorder. Labels never hold channel ids (their number is
//! unbounded and they are secrets of a kind: whoever knows one can send
//! webhooks to it).
//!
//! Relay (`GET /metrics`):
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `wow_webhooks_total` | counter | `outcome` = delivered, queued, forwarded, rejected, failed; `class` = 2xx…5xx |
//! | `wow_delivery_duration_seconds` | histogram | — (arrival to the app's response head) |
//! | `wow_request_bytes_total` | counter | — (body bytes from senders) |
//! | `wow_response_bytes_total` | counter | — (body bytes of app answers to senders) |
//! | `wow_channels` | gauge | — (channels known) |
//! | `wow_channels_attached` | gauge | — |
//! | `wow_queue_deliveries` | gauge | — (deliveries waiting in the offline queue) |
//! | `wow_queue_bytes` | gauge | — |
//! | `wow_attaches_total` | counter | — (WebSocket attaches) |
//! | `wow_reconnects_total` | counter | — (attaches of a channel that was held before) |
//!
//! Client (`--metrics-listen`):
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `wow_client_deliveries_total` | counter | `profile`, `class` |
//! | `wow_client_delivery_duration_seconds` | histogram | `profile` |
//! | `wow_client_reconnects_total` | counter | `profile` |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Webhooks by outcome and status class.
pub const WEBHOOKS: &str = "wow_webhooks_total";
/// Time from a webhook's arrival to the app's response head.
pub const DELIVERY_DURATION: &str = "wow_delivery_duration_seconds";
/// Body bytes received from senders.
pub const REQUEST_BYTES: &str = "wow_request_bytes_total";
/// Body bytes of app answers sent to senders.
pub const RESPONSE_BYTES: &str = "wow_response_bytes_total";
/// Channels known.
pub const CHANNELS: &str = "wow_channels";
/// Channels with a client attached.
pub const CHANNELS_ATTACHED: &str = "wow_channels_attached";
/// Deliveries waiting in the offline queue.
pub const QUEUE_DELIVERIES: &str = "wow_queue_deliveries";
/// Bytes waiting in the offline queue.
pub const QUEUE_BYTES: &str = "wow_queue_bytes";
/// WebSocket attaches.
pub const ATTACHES: &str = "wow_attaches_total";
/// Attaches of a channel that had been held before.
pub const RECONNECTS: &str = "wow_reconnects_total";
/// Client: deliveries by profile and status class.
pub const CLIENT_DELIVERIES: &str = "wow_client_deliveries_total";
/// Client: time from a request's arrival to the end of the app's answer.
pub const CLIENT_DELIVERY_DURATION: &str = "wow_client_delivery_duration_seconds";
/// Client: reconnect attempts by profile.
pub const CLIENT_RECONNECTS: &str = "wow_client_reconnects_total";

/// Histogram buckets for latencies, in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle;
/// `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// The Prometheus text of every metric recorded so far.
pub fn render() -> String {
    match install() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

/// `2xx`, `4xx`… for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_every_code() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(304), "3xx");
        assert_eq!(status_class(431), "4xx");
        assert_eq!(status_class(504), "5xx");
        assert_eq!(status_class(101), "1xx");
    }
}
