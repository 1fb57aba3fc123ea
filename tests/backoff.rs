//! Reconnect backoff, timed with paused tokio time: a client whose relay is
//! down retries forever, each wait about twice the last, capped at 30 s.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio::time::Instant;
use wow::client::{Client, TunnelState};

#[tokio::test(start_paused = true)]
async fn reconnects_back_off_exponentially_to_30_seconds_and_never_give_up() {
    // Virtual time: an hour of it passes in well under a second.
    within(Duration::from_secs(3600), backs_off()).await;
}

async fn backs_off() {
    // A relay that is down: nothing listens on this port.
    let port = free_port();
    let server_url = format!("http://127.0.0.1:{port}");
    let state = tempfile::tempdir().unwrap();
    // A saved channel, so every attempt is one WebSocket connect.
    wow::client::StateDir::new(state.path())
        .save_channel(
            "default",
            &server_url,
            &wow::client::state::ChannelRecord {
                channel_id: uuid::Uuid::new_v4(),
                token: wow::Secret::new("token"),
                webhook_url: format!("{server_url}/webhook/x"),
            },
        )
        .unwrap();
    let config = client_config(&server_url, "http://127.0.0.1:9", state.path());
    let (events, _printed) = mpsc::unbounded_channel();
    let client = Client::new(config, events);
    let board = client.status();
    let mut changes = board.subscribe();
    let running = tokio::spawn(client.run(std::future::pending()));

    let mut attempts: Vec<(u32, Instant)> = Vec::new();
    while attempts.len() < 12 {
        changes.changed().await.unwrap();
        let state = board
            .snapshot()
            .remove("default")
            .map(|status| status.state);
        if let Some(TunnelState::Reconnecting { attempt }) = state
            && attempts.last().map(|(last, _)| *last) != Some(attempt)
        {
            attempts.push((attempt, Instant::now()));
        }
    }
    running.abort();

    // The wait after failed attempt n is between half and all of
    // min(0.5 s × 2^(n-1), 30 s).
    for pair in attempts.windows(2) {
        let ((attempt, at), (next, next_at)) = (pair[0], pair[1]);
        assert_eq!(next, attempt + 1);
        let ceiling = Duration::from_millis(500)
            .saturating_mul(1 << (attempt - 1))
            .min(Duration::from_secs(30));
        let waited = next_at - at;
        assert!(
            waited >= ceiling / 2 && waited <= ceiling + Duration::from_millis(50),
            "after attempt {attempt}: waited {waited:?}, ceiling {ceiling:?}"
        );
    }
    let (last, _) = attempts.last().unwrap();
    assert_eq!(*last, 12, "still retrying");
}
