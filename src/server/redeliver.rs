//! Redelivery: while a client holds a channel, its queued deliveries go out
//! one at a time, oldest first, and each leaves the queue only once the
//! app's whole answer came back.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{debug, info, warn};

use super::Relay;
use super::queue::Queued;
use super::session::Session;
use crate::idle::Progress;
use crate::protocol::{OpenError, ResetCode, StreamError, StreamHandle};

/// The first retry after an app failed to answer waits this long; each
/// further one doubles it, up to [`RETRY_CAP`].
pub(super) const RETRY_BASE: Duration = Duration::from_secs(1);

/// Longest wait between two tries of the same delivery.
pub(super) const RETRY_CAP: Duration = Duration::from_secs(60);

/// How one redelivery ended.
enum Outcome {
    /// The app answered with this status; the delivery is done.
    Answered(u16),
    /// The app did not answer (unreachable, timed out, failed); try again later.
    Unanswered(String),
    /// The session is gone; the next attach picks up from here.
    SessionGone,
}

/// Delivers the channel's queue through `session` until the session ends.
pub async fn run(relay: Arc<Relay>, session: Arc<Session>) {
    let channel = session.channel();
    let queue = relay.queue().clone();
    let wake = queue.waker(channel);
    let turn = queue.delivery_lock(channel);
    let mut failures: u32 = 0;
    loop {
        let woken = wake.notified();
        let mut woken = pin!(woken);
        woken.as_mut().enable();

        // A hand-over to another replica may be sending this channel's
        // queue: wait for its delivery to finish first.
        let mine = tokio::select! {
            mine = turn.lock() => mine,
            () = session.ended() => return,
        };
        let next = match queue.first(channel).await {
            Ok(next) => next,
            Err(error) => {
                warn!(%channel, error = format!("{error:#}"), "cannot read the queue");
                None
            }
        };
        let Some(queued) = next else {
            drop(mine);
            tokio::select! {
                () = woken => continue,
                () = session.ended() => return,
            }
        };

        match deliver(&relay, &session, &queued).await {
            Outcome::Answered(status) => {
                failures = 0;
                info!(%channel, delivery = %queued.head.delivery_id.unwrap_or_default(), status, "queued delivery answered");
                if let Err(error) = queue.remove(&queued).await {
                    warn!(%channel, error = format!("{error:#}"), "cannot remove an answered delivery");
                }
                drop(mine);
            }
            Outcome::Unanswered(reason) => {
                drop(mine);
                failures = failures.saturating_add(1);
                let delay = RETRY_BASE
                    .saturating_mul(1 << failures.min(8).saturating_sub(1))
                    .min(RETRY_CAP);
                info!(%channel, delivery = %queued.head.delivery_id.unwrap_or_default(), %reason, retry_in = ?delay, "queued delivery not answered");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = session.ended() => return,
                }
            }
            Outcome::SessionGone => return,
        }
    }
}

/// Sends one queued delivery and waits for the app's whole answer.
async fn deliver(relay: &Relay, session: &Session, queued: &Queued) -> Outcome {
    let mut head = queued.head.clone();
    head.redelivered = true;
    let outgoing = loop {
        match session.mux().open(&head) {
            Ok(outgoing) => break outgoing,
            Err(OpenError::Closed) => return Outcome::SessionGone,
            Err(OpenError::Busy) => {
                // Live requests fill the channel; wait for room.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = session.ended() => return Outcome::SessionGone,
                }
            }
        }
    };

    let progress = Progress::new();
    let upload = tokio::spawn(send_body(
        relay.queue().body(queued),
        outgoing.stream.clone(),
        progress.clone(),
    ));
    let timeout = relay.config().limits.request_timeout;
    let answer = tokio::select! {
        answer = outgoing.response.recv() => answer,
        () = progress.idle_for(timeout) => {
            outgoing.stream.reset(ResetCode::Cancel, "request timeout");
            upload.abort();
            return Outcome::Unanswered("no answer within request_timeout".to_owned());
        }
    };
    let outcome = match answer {
        Ok((head, mut body)) => {
            // Nobody waits for this answer any more: read it to its end.
            let mut complete = true;
            while let Some(chunk) = body.next().await {
                if chunk.is_err() {
                    complete = false;
                    break;
                }
            }
            if complete {
                Outcome::Answered(head.status.as_u16())
            } else {
                Outcome::Unanswered("the answer was cut".to_owned())
            }
        }
        Err(StreamError::Reset { code, reason }) => match code {
            ResetCode::Refused => {
                warn!(reason, "the client refuses a queued delivery: dropping it");
                Outcome::Answered(400)
            }
            _ => Outcome::Unanswered(format!("{code:?}: {reason}")),
        },
        Err(StreamError::ConnectionLost { .. } | StreamError::Closed) => Outcome::SessionGone,
    };
    upload.abort();
    debug!(delivery = %queued.head.delivery_id.unwrap_or_default(), "redelivery finished");
    outcome
}

async fn send_body(
    body: impl futures::Stream<Item = anyhow::Result<bytes::Bytes>>,
    stream: StreamHandle,
    progress: Progress,
) {
    let mut body = pin!(body);
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            stream.reset(ResetCode::Internal, "cannot read the queued body");
            return;
        };
        if stream.send_data(chunk).await.is_err() {
            return;
        }
        progress.touch();
    }
    progress.touch();
    stream.finish();
}
