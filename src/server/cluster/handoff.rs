//! Hand-over of queued deliveries: a replica whose offline queue holds
//! deliveries for a channel that another replica now holds forwards them
//! there, one at a time, oldest first. Each keeps its delivery id, arrival
//! time and redelivered mark, and leaves this replica's queue only once the
//! holder reports the app's whole answer, so it is delivered at least once
//! and never lost. A replica that stops holding the channel (or cannot be
//! reached) ends the hand-over; the next sync looks for the holder again.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http_body_util::BodyExt;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use super::forward::{self, BoxError, Outbound, PeerBody};
use super::marker::Kind;
use super::{Cluster, Relay};
use crate::server::queue::Queued;
use crate::server::redeliver::{RETRY_BASE, RETRY_CAP};
use crate::server::registry::Lookup;

/// While a hand-over waits for a delivery still being stored, it looks
/// again at least this often.
const RECHECK: Duration = Duration::from_secs(1);

/// How one hand-over ended.
enum Handed {
    /// The app answered with this status; the delivery is done.
    Answered(u16),
    /// The client refused it for good; drop it, as a local redelivery would.
    Dropped,
    /// The holder took it into its own queue.
    Queued,
    /// The app did not answer; try again later.
    Unanswered(String),
    /// The peer no longer holds the channel, or cannot be reached.
    Moved(String),
}

/// Starts a hand-over for each channel with queued deliveries here that
/// no client holds here but a peer does.
pub fn supervise(relay: &Arc<Relay>, cluster: &Arc<Cluster>) {
    if cluster.stop.is_cancelled() {
        return;
    }
    for channel in relay.queue().pending_channels() {
        if matches!(relay.registry().lookup(channel), Lookup::Attached { .. }) {
            continue;
        }
        let Some(holder) = cluster.peers.holder(channel) else {
            continue;
        };
        if !cluster.claim_handoff(channel) {
            continue;
        }
        let span = info_span!("handoff", %channel, peer = %holder);
        tokio::spawn(run(relay.clone(), cluster.clone(), channel, holder).instrument(span));
    }
}

/// Hands the channel's queue to `holder` until it is empty, a client
/// attaches here, or the holder stops taking it.
async fn run(relay: Arc<Relay>, cluster: Arc<Cluster>, channel: Uuid, holder: String) {
    let _claim = Claim {
        cluster: cluster.clone(),
        channel,
    };
    info!("handing queued deliveries to the holding replica");
    let queue = relay.queue().clone();
    let wake = queue.waker(channel);
    let turn = queue.delivery_lock(channel);
    let mut failures: u32 = 0;
    loop {
        if cluster.stop.is_cancelled()
            || matches!(relay.registry().lookup(channel), Lookup::Attached { .. })
        {
            return;
        }
        let woken = wake.notified();
        let mut woken = pin!(woken);
        woken.as_mut().enable();

        let mine = turn.lock().await;
        let next = match queue.first(channel).await {
            Ok(next) => next,
            Err(error) => {
                warn!(error = format!("{error:#}"), "cannot read the queue");
                None
            }
        };
        let Some(queued) = next else {
            drop(mine);
            if !queue.has_pending(channel) {
                return;
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(RECHECK) => {}
                () = cluster.stop.cancelled() => return,
            }
            continue;
        };

        let handed = hand_over(&relay, &cluster, &holder, &queued).await;
        let delay = match handed {
            Handed::Answered(status) => {
                info!(delivery = ?queued.head.delivery_id, status, "queued delivery answered through the holding replica");
                None
            }
            Handed::Queued => {
                info!(delivery = ?queued.head.delivery_id, "queued delivery moved to the holding replica's queue");
                None
            }
            Handed::Dropped => {
                warn!(delivery = ?queued.head.delivery_id, "the client refuses a queued delivery: dropping it");
                None
            }
            Handed::Unanswered(reason) => {
                failures = failures.saturating_add(1);
                let delay = RETRY_BASE
                    .saturating_mul(1 << failures.min(8).saturating_sub(1))
                    .min(RETRY_CAP);
                info!(delivery = ?queued.head.delivery_id, %reason, retry_in = ?delay, "queued delivery not answered");
                Some(delay)
            }
            Handed::Moved(reason) => {
                info!(%reason, "the holding replica stopped taking this channel's deliveries");
                return;
            }
        };
        match delay {
            None => {
                failures = 0;
                if let Err(error) = queue.remove(&queued).await {
                    warn!(
                        error = format!("{error:#}"),
                        "cannot remove a handed-over delivery"
                    );
                }
                drop(mine);
            }
            Some(delay) => {
                drop(mine);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cluster.stop.cancelled() => return,
                }
            }
        }
    }
}

/// Forwards one queued delivery and reads the holder's whole answer.
async fn hand_over(relay: &Relay, cluster: &Cluster, holder: &str, queued: &Queued) -> Handed {
    let body: PeerBody = Box::pin(
        relay
            .queue()
            .body(queued)
            .map(|chunk| chunk.map_err(BoxError::from)),
    );
    let outbound = Outbound {
        server_url: holder,
        channel: queued.channel,
        head: &queued.head,
        kind: Kind::Handoff,
    };
    let timeout = relay.config().limits.request_timeout;
    let response = match cluster.send(&outbound, body, timeout).await {
        Ok(response) => response,
        Err(failed) => return Handed::Moved(failed.reason),
    };
    let status = response.status().as_u16();
    let outcome = forward::outcome(&response).map(str::to_owned);

    // Nobody waits for this answer: read it to its end.
    let mut body = response.into_body();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            complete = false;
            break;
        }
    }
    debug!(delivery = ?queued.head.delivery_id, status, ?outcome, complete, "hand-over answered");
    match outcome.as_deref() {
        Some("delivered") if complete => Handed::Answered(status),
        Some("delivered") => Handed::Unanswered("the answer was cut".to_owned()),
        Some("queued") => Handed::Queued,
        Some("refused") => Handed::Dropped,
        Some("not-held") => Handed::Moved("the channel is not held there".to_owned()),
        Some(other) => Handed::Moved(format!("the peer said {other}")),
        None => Handed::Unanswered(format!("status {status}")),
    }
}

/// Releases a channel's hand-over when its task ends, however it ends.
struct Claim {
    cluster: Arc<Cluster>,
    channel: Uuid,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.cluster.release_handoff(self.channel);
    }
}
