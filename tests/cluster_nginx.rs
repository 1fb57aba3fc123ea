//! A plain round-robin balancer (nginx) in front of three replicas: every
//! webhook reaches the app although two of three land on a replica that
//! does not hold the channel, and none is lost while a replica restarts.

mod cluster_support;
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::*;
use common::*;
use futures::StreamExt;

/// Webhooks sent through the balancer.
const WEBHOOKS: usize = 300;

/// Webhooks in flight at once.
const CONCURRENCY: usize = 4;

/// Between the starts of two webhooks: 300 take about 6 s.
const SPACING: Duration = Duration::from_millis(20);

/// The restart begins once this many were answered.
const RESTART_AFTER: usize = 100;

async fn post(
    http: &reqwest::Client,
    url: &str,
    file: &CorpusFile,
    n: usize,
) -> Result<u16, String> {
    let mut request = http.post(format!("{url}/{}?n={n}", file.scheme));
    for (name, value) in &file.headers {
        request = request.header(name, value);
    }
    let response = request
        .body(file.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    Ok(status)
}

async fn restart_holder(replicas: &mut [Replica], channel: uuid::Uuid) -> Duration {
    let index = holder(replicas, channel).await.unwrap_or(0);
    let started = Instant::now();
    let logged = replicas[index].restart().await;
    // It left the gossip before it told its client to go.
    let left = logged
        .find("left the cluster")
        .expect("the replica left the cluster");
    let detached = logged
        .find("client detached")
        .expect("its client was detached");
    assert!(left < detached, "{logged}");
    let url = replicas[index].url.clone();
    eventually(STEP, "the restarted replica is ready", || {
        let url = url.clone();
        async move { get(&url, "/readyz", None).await.0 == 200 }
    })
    .await;
    eprintln!(
        "restarted the replica holding the channel ({url}) in {:?}",
        started.elapsed()
    );
    started.elapsed()
}

#[tokio::test]
async fn nginx_round_robin_delivers_300_corpus_webhooks_while_a_replica_restarts() {
    within(STEP * 8, async {
        let ports = ports();
        let mut replicas = start_cluster(ports).await;
        let upstreams: Vec<String> = IPS.iter().map(|ip| format!("{ip}:{}", ports.http)).collect();
        let nginx = start_nginx(&upstreams).await;
        let secrets = corpus_secrets();
        let mut app = start_app(move |request| match verify_signature(request, &secrets) {
            Ok(_) => Reply::new(200, "ok"),
            Err(why) => Reply::new(401, why),
        })
        .await;
        let state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(&nginx.url, &app.url, state.path()));
        let webhook_url = client.attached().await;
        let channel = channel_of(&webhook_url);
        eventually(CONVERGE, "every replica routes the channel", || {
            let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
            async move {
                for url in &urls {
                    if channel_servers(&traefik(url).await, channel).is_empty() {
                        return false;
                    }
                }
                true
            }
        })
        .await;

        // Senders go on while the replica holding the channel restarts.
        let files = Arc::new(corpus());
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let started = Instant::now();
        let first = tokio::time::Instant::now();
        let sending = {
            let (files, answered, url) = (files.clone(), answered.clone(), webhook_url.clone());
            tokio::spawn(async move {
                futures::stream::iter(0..WEBHOOKS)
                    .map(|n| {
                        let (files, answered, http, url) =
                            (files.clone(), answered.clone(), http.clone(), url.clone());
                        async move {
                            tokio::time::sleep_until(first + SPACING * n as u32).await;
                            let status = post(&http, &url, &files[n % files.len()], n).await;
                            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            (n, status)
                        }
                    })
                    .buffer_unordered(CONCURRENCY)
                    .collect::<Vec<_>>()
                    .await
            })
        };
        eventually(STEP, "the first webhooks are answered", || {
            let answered = answered.clone();
            async move { answered.load(std::sync::atomic::Ordering::Relaxed) >= RESTART_AFTER }
        })
        .await;
        restart_holder(&mut replicas, channel).await;
        let statuses = sending.await.unwrap();
        let sent_in = started.elapsed();

        let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
        for (n, status) in &statuses {
            let key = match status {
                Ok(status) => status.to_string(),
                Err(error) => format!("error {error}"),
            };
            if !matches!(status, Ok(200 | 202)) {
                eprintln!("webhook {n}: {key}");
            }
            *by_status.entry(key).or_default() += 1;
        }
        eprintln!("{WEBHOOKS} webhooks answered in {sent_in:?}: {by_status:?}");
        assert!(
            statuses.iter().all(|(_, status)| matches!(status, Ok(200 | 202))),
            "every webhook is taken: {by_status:?}; nginx: {}",
            nginx.errors()
        );

        // Each arrives, signed and byte-exact; queued ones a little later.
        let mut seen = vec![0usize; WEBHOOKS];
        let mut remaining = WEBHOOKS;
        let deadline = Instant::now() + Duration::from_secs(90);
        while remaining > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(request)) = tokio::time::timeout(wait, app.requests.recv()).await else {
                let missing: Vec<usize> = (0..WEBHOOKS).filter(|n| seen[*n] == 0).collect();
                panic!("{} webhooks never arrived: {missing:?}", missing.len());
            };
            let n: usize = request.target.split("n=").nth(1).unwrap().parse().unwrap();
            let file = &files[n % files.len()];
            assert_eq!(request.body_sha256(), file.sha256, "webhook {n}");
            assert!(verify_signature(&request, &corpus_secrets()).is_ok(), "webhook {n}");
            if seen[n] == 0 {
                remaining -= 1;
            }
            seen[n] += 1;
        }
        let duplicates: usize = seen.iter().map(|count| count - 1).sum();
        eprintln!(
            "all {WEBHOOKS} arrived {:?} after the first was sent; {duplicates} duplicate deliveries",
            started.elapsed()
        );
        client.shutdown().await.unwrap();
    })
    .await;
}
