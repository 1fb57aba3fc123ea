//! Clustering (SPEC §6) with real replicas on 127.0.0.2, 127.0.0.3 and
//! 127.0.0.4: routes for Traefik, peer forwarding, the hand-over of queued
//! deliveries, failover, discovery and the cluster secret.

mod cluster_support;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster_support::*;
use common::*;

fn sender() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The same webhook URL, through another replica.
fn via(webhook_url: &str, replica: &Replica) -> String {
    format!("{}{}", replica.url, path_of(webhook_url))
}

fn signed_app() -> impl Fn(&Captured) -> Reply + Send + Sync + 'static {
    let secrets = corpus_secrets();
    move |request: &Captured| match verify_signature(request, &secrets) {
        Ok(scheme) => Reply::new(201, format!("{scheme} ok {}", request.body_sha256()))
            .header("Set-Cookie", "session=abc; Path=/")
            .header("Set-Cookie", "theme=dark; Path=/")
            .header("X-App", "yes"),
        Err(why) => Reply::new(401, why),
    }
}

#[tokio::test]
async fn every_replica_routes_each_channel_to_its_owner_and_forwards_byte_exact() {
    within(STEP * 6, async {
        let ports = ports();
        let replicas = start_cluster(ports).await;
        let mut app = start_app(signed_app()).await;

        // One client per replica, each attached straight to it.
        let mut clients = Vec::new();
        let mut channels = Vec::new();
        for replica in &replicas {
            let state = tempfile::tempdir().unwrap();
            let mut client = start_client(client_config(&replica.url, &app.url, state.path()));
            let url = client.attached().await;
            channels.push((channel_of(&url), replica.url.clone(), url));
            clients.push((client, state));
        }
        let attached = Instant::now();
        let took = eventually(
            CONVERGE,
            "every replica routes every channel to its owner",
            || {
                let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
                let channels = channels.clone();
                async move {
                    for url in &urls {
                        let config = traefik(url).await;
                        if !channels
                            .iter()
                            .all(|(id, owner, _)| routes_to(&config, *id, owner))
                        {
                            return false;
                        }
                    }
                    true
                }
            },
        )
        .await;
        eprintln!(
            "routes converged {took:?} after polling began, {:?} after the last attach",
            attached.elapsed()
        );

        // Every corpus delivery, sent to replicas that do not hold the channel.
        let (channel, owner, webhook_url) = channels[0].clone();
        let http = sender();
        for (n, file) in corpus().iter().enumerate() {
            let entry = &replicas[1 + n % 2];
            assert_ne!(entry.url, owner);
            let url = format!(
                "{}/{}?n={n}&x=%2F+%20",
                via(&webhook_url, entry),
                file.scheme
            );
            let mut request = http.request(file.method.parse().unwrap(), &url);
            for (name, value) in &file.headers {
                request = request.header(name, value);
            }
            let response = request.body(file.body.clone()).send().await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.text().await.unwrap();
            assert_eq!(status, 201, "{}: {body}", file.path);
            assert_eq!(body, format!("{} ok {}", file.scheme, file.sha256));
            let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
            assert_eq!(cookies, ["session=abc; Path=/", "theme=dark; Path=/"]);
            assert_eq!(headers["x-app"], "yes");
            assert!(headers.get("x-wow-outcome").is_none());

            let seen = app.request().await;
            assert_eq!(seen.target, format!("/{}?n={n}&x=%2F+%20", file.scheme));
            assert_eq!(seen.body_sha256(), file.sha256, "{}", file.path);
            let names: Vec<String> = file
                .headers
                .iter()
                .map(|(n, _)| n.to_ascii_lowercase())
                .collect();
            let arrived: Vec<String> = seen
                .headers
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| names.contains(n))
                .collect();
            assert_eq!(arrived, names, "{}: header order", file.path);
            // The sender as the first replica saw it; no hop of our own added.
            let host = entry.url.trim_start_matches("http://");
            assert_eq!(seen.header("x-forwarded-host").as_deref(), Some(host));
            assert_eq!(seen.all("x-forwarded-for").len(), 1);
            assert!(!seen.header("x-forwarded-for").unwrap().contains(','));
            assert_eq!(
                seen.header("x-forwarded-prefix"),
                Some(format!("/webhook/{channel}"))
            );
            assert!(seen.header("x-wow-delivery-id").is_some());
            assert!(
                seen.headers
                    .iter()
                    .all(|(name, _)| !name.starts_with("x-wow-peer"))
            );
            assert!(seen.header("x-wow-redelivered").is_none());
        }

        // A sender cannot pass for a replica.
        let forged = http
            .post(via(&webhook_url, &replicas[1]))
            .header("X-Wow-Peer", "v1 live 1700000000 00")
            .header("X-Wow-Peer-Delivery", uuid::Uuid::new_v4().to_string())
            .header("X-Forwarded-For", "6.6.6.6")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403);
        let stray = http
            .post(via(&webhook_url, &replicas[2]))
            .header("X-Wow-Peer-Delivery", uuid::Uuid::new_v4().to_string())
            .body("stray")
            .send()
            .await
            .unwrap();
        assert_eq!(stray.status(), 401, "unsigned body: the app refuses it");
        let seen = app.request().await;
        assert_eq!(seen.body, b"stray");
        assert!(seen.header("x-wow-peer-delivery").is_none());

        // Unknown channels are unknown everywhere.
        let unknown = http
            .post(format!(
                "{}/webhook/{}",
                replicas[1].url,
                uuid::Uuid::new_v4()
            ))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
    })
    .await;
}

#[tokio::test]
async fn deliveries_queued_on_every_replica_reach_the_client_wherever_it_attaches() {
    within(STEP * 6, async {
        let ports = ports();
        let replicas = start_cluster(ports).await;
        let mut app = start_app(|_| Reply::new(200, "ok")).await;

        // A channel issued on the first replica, known to all, held by none.
        // The client reaches the replicas through a switch, so that its
        // server URL (and so its channel) stays while the replica changes.
        let switch = start_switch(replicas[0].url.trim_start_matches("http://")).await;
        let state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(&switch.url, &app.url, state.path()));
        let webhook_url = client.attached().await;
        let channel = channel_of(&webhook_url);
        eventually(CONVERGE, "every replica knows the channel", || {
            let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
            async move {
                for url in &urls {
                    let config = traefik(url).await;
                    if config["http"]["routers"][format!("wow-ws-{channel}")].is_null() {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        client.shutdown().await.unwrap();
        eventually(CONVERGE, "no replica holds the channel", || {
            let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
            async move {
                for url in &urls {
                    let config = traefik(url).await;
                    if !config["http"]["routers"][format!("wow-webhook-{channel}")].is_null() {
                        return false;
                    }
                }
                true
            }
        })
        .await;

        // Ten webhooks into each replica's queue, interleaved.
        let http = sender();
        let mut ids = HashMap::new();
        for n in 0..10 {
            for (r, replica) in replicas.iter().enumerate() {
                let response = http
                    .post(format!(
                        "{}{}/r{r}?n={n}",
                        replica.url,
                        path_of(&webhook_url)
                    ))
                    .body(format!("replica {r} number {n}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                let body: serde_json::Value = response.json().await.unwrap();
                ids.insert((r, n), body["delivery_id"].as_str().unwrap().to_owned());
            }
        }

        // The client comes back on the second replica: all thirty arrive,
        // in order per replica, with their own ids, marked redelivered.
        let started = Instant::now();
        switch.set(replicas[1].url.trim_start_matches("http://"));
        let mut client = start_client(client_config(&switch.url, &app.url, state.path()));
        assert_eq!(client.attached().await, webhook_url);
        let mut next = [0usize; 3];
        for _ in 0..30 {
            let seen = app.request().await;
            let r: usize = seen.target[2..3].parse().unwrap();
            let n: usize = seen.target.split("n=").nth(1).unwrap().parse().unwrap();
            assert_eq!(n, next[r], "order of replica {r}'s queue: {}", seen.target);
            next[r] += 1;
            assert_eq!(seen.body, format!("replica {r} number {n}").as_bytes());
            assert_eq!(
                seen.header("x-wow-delivery-id").as_ref(),
                Some(&ids[&(r, n)])
            );
            assert_eq!(seen.header("x-wow-redelivered").as_deref(), Some("true"));
            assert!(seen.header("x-wow-received-at").is_some());
            assert_eq!(
                seen.header("x-forwarded-prefix"),
                Some(format!("/webhook/{channel}"))
            );
        }
        eprintln!(
            "30 queued deliveries from three replicas arrived in {:?}",
            started.elapsed()
        );
        for replica in &replicas {
            eventually(CONVERGE, "every queue is empty", || async {
                let (status, metrics) = metrics_text(&replica.url).await;
                status == 200 && metrics.contains("wow_queue_deliveries 0")
            })
            .await;
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(500), app.requests.recv())
                .await
                .is_err(),
            "no delivery arrives twice here"
        );
        client.shutdown().await.unwrap();
    })
    .await;
}

async fn metrics_text(base: &str) -> (u16, String) {
    let response = http()
        .get(format!("{base}/metrics"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn a_killed_replica_leaves_the_routes_and_its_client_reattaches_through_the_balancer() {
    within(STEP * 6, async {
        let ports = ports();
        let mut replicas = start_cluster(ports).await;
        let upstreams: Vec<String> = IPS.iter().map(|ip| format!("{ip}:{}", ports.http)).collect();
        let nginx = start_nginx(&upstreams).await;
        let mut app = start_app(|_| Reply::new(200, "ok")).await;

        let state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(&nginx.url, &app.url, state.path()));
        let webhook_url = client.attached().await;
        assert!(webhook_url.starts_with(&nginx.url), "{webhook_url}");
        let channel = channel_of(&webhook_url);
        let owner = bounded(CONVERGE, async {
            loop {
                if let Some(owner) = holder(&replicas, channel).await {
                    return owner;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let dead_url = replicas[owner].url.clone();
        let survivors: Vec<String> = replicas
            .iter()
            .filter(|r| r.url != dead_url)
            .map(|r| r.url.clone())
            .collect();

        let killed = Instant::now();
        replicas[owner].kill().await;
        let reattached = client.attached().await;
        let reattach_time = killed.elapsed();
        assert_eq!(reattached, webhook_url, "same URL after failover");

        let gone = eventually(CONVERGE, "the dead replica leaves every survivor's routes", || {
            let survivors = survivors.clone();
            let dead_url = dead_url.clone();
            async move {
                for url in &survivors {
                    let config = traefik(url).await;
                    if replica_urls(&config).contains(&dead_url) || replica_urls(&config).len() != 2 {
                        return false;
                    }
                    if channel_servers(&config, channel).iter().any(|s| s == &dead_url) {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        eprintln!(
            "after SIGKILL: client reattached in {reattach_time:?}, dead replica out of the routes in {:?}",
            killed.elapsed().max(gone)
        );
        assert!(killed.elapsed() <= CONVERGE + Duration::from_secs(1));

        // The survivors serve: through the balancer and through each of them.
        for base in std::iter::once(nginx.url.clone()).chain(survivors.iter().cloned()) {
            let response = sender()
                .post(format!("{base}{}", path_of(&webhook_url)))
                .body("after failover")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "via {base}");
            assert_eq!(app.request().await.body, b"after failover");
        }
        client.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_node_with_another_secret_cannot_join_and_internal_endpoints_need_the_secret() {
    within(STEP * 4, async {
        let ports = ports();
        let first = start_replica(Spec::new(IPS[0], ports)).await;
        let second = start_replica(Spec::new(IPS[1], ports)).await;
        let mut stranger_spec = Spec::new(IPS[2], ports);
        stranger_spec.secret = Some("another-secret".to_owned());
        let stranger = start_replica(stranger_spec).await;

        eventually(
            CONVERGE,
            "the two with the secret see each other",
            || async {
                replica_urls(&traefik(&first.url).await).len() == 2
                    && replica_urls(&traefik(&second.url).await).len() == 2
            },
        )
        .await;
        eventually(CONVERGE, "the stranger has tried to join", || async {
            get(&stranger.url, "/readyz", None).await.0 == 200
        })
        .await;
        // Several sync rounds (1 s each) later, still apart.
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_secs(4) {
            for replica in [&first, &second] {
                let seen = replica_urls(&traefik(&replica.url).await);
                assert!(!seen.contains(&stranger.url), "{seen:?}");
            }
            let seen = replica_urls(
                &get(&stranger.url, "/traefik-config", Some("another-secret"))
                    .await
                    .1,
            );
            assert_eq!(seen, std::slice::from_ref(&stranger.url));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(stranger.process.stderr().contains("joined the cluster"));

        // The internal endpoints answer only with the secret.
        let channel = uuid::Uuid::new_v4();
        for path in [
            "/internal/channels".to_owned(),
            format!("/internal/channels/{channel}"),
            "/traefik-config".to_owned(),
            "/metrics".to_owned(),
        ] {
            assert_eq!(get(&first.url, &path, None).await.0, 401, "{path}");
            assert_eq!(get(&first.url, &path, Some("wrong")).await.0, 401, "{path}");
            assert_eq!(get(&first.url, &path, Some(SECRET)).await.0, 200, "{path}");
        }
        let (_, list) = get(&first.url, "/internal/channels", Some(SECRET)).await;
        assert_eq!(list["server_url"], first.url.as_str());
        assert!(list["ws_channels"].as_array().unwrap().is_empty());
        assert!(list["webhook_channels"].as_array().unwrap().is_empty());
        let (_, state) = get(
            &first.url,
            &format!("/internal/channels/{channel}"),
            Some(SECRET),
        )
        .await;
        assert_eq!(state["known"], false);
    })
    .await;
}

#[tokio::test]
async fn peers_are_found_through_a_domain_and_a_single_server_opens_no_gossip_port() {
    within(STEP * 4, async {
        let ports = ports();
        // localhost resolves to 127.0.0.1 here: the second replica finds
        // the first through it, with no static peers.
        let mut seed = Spec::new("127.0.0.1", ports);
        seed.peers = vec![format!("127.0.0.1:{}", ports.gossip)];
        let seed = start_replica(seed).await;
        let mut joiner = Spec::new(IPS[0], ports);
        joiner.peers = Vec::new();
        joiner.peer_domain = Some("localhost".to_owned());
        let joiner = start_replica(joiner).await;
        let took = eventually(CONVERGE, "the two find each other", || async {
            replica_urls(&traefik(&seed.url).await).len() == 2
                && replica_urls(&traefik(&joiner.url).await).len() == 2
        })
        .await;
        eprintln!("joined through peer_domain in {took:?}");

        // A server without peers opens no gossip port.
        let gossip = free_port();
        let state = tempfile::tempdir().unwrap();
        let (_single, addr) =
            spawn_server(state.path(), &["--memberlist-port", &gossip.to_string()]).await;
        assert_eq!(get(&format!("http://{addr}"), "/readyz", None).await.0, 200);
        std::net::TcpListener::bind(("127.0.0.1", gossip)).expect("gossip port left free");
        std::net::UdpSocket::bind(("127.0.0.1", gossip)).expect("gossip port left free");
        let (status, list) = get(&format!("http://{addr}"), "/internal/channels", None).await;
        assert_eq!(status, 200);
        assert_eq!(list["server_url"], format!("http://{addr}"));
    })
    .await;
}

#[tokio::test]
async fn a_frozen_replica_delays_no_answer_and_leaves_the_routes() {
    within(STEP * 4, async {
        let ports = ports();
        let replicas = start_cluster(ports).await;
        let app = start_app(|_| Reply::new(200, "ok")).await;

        // A channel known everywhere, held by nobody: webhooks for it make
        // the replicas ask their peers.
        let state = tempfile::tempdir().unwrap();
        let mut client = start_client(client_config(&replicas[0].url, &app.url, state.path()));
        let webhook_url = client.attached().await;
        let channel = channel_of(&webhook_url);
        client.shutdown().await.unwrap();
        eventually(CONVERGE, "the channel is known and held by none", || {
            let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
            async move {
                for url in &urls {
                    let config = traefik(url).await;
                    let routers = &config["http"]["routers"];
                    if routers[format!("wow-ws-{channel}")].is_null()
                        || !routers[format!("wow-webhook-{channel}")].is_null()
                    {
                        return false;
                    }
                }
                true
            }
        })
        .await;

        let frozen = &replicas[2];
        signal(frozen.process.pid(), "STOP");
        let stopped = Instant::now();
        // Poll by hand: every answer is timed on the way.
        let mut slowest = Duration::ZERO;
        let webhook = format!("{}{}", replicas[1].url, path_of(&webhook_url));
        let gone = loop {
            let mut gone = true;
            for url in [&replicas[0].url, &replicas[1].url] {
                let asked = Instant::now();
                let config = traefik(url).await;
                slowest = slowest.max(asked.elapsed());
                gone &= !replica_urls(&config).contains(&frozen.url);
            }
            let asked = Instant::now();
            let response = sender()
                .post(&webhook)
                .body("while frozen")
                .send()
                .await
                .unwrap();
            slowest = slowest.max(asked.elapsed());
            assert_eq!(response.status(), 202);
            if gone {
                break stopped.elapsed();
            }
            assert!(
                stopped.elapsed() < CONVERGE,
                "the frozen replica is still routed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!(
            "after SIGSTOP: out of the routes in {gone:?}; slowest answer meanwhile {slowest:?}"
        );
        assert!(
            slowest < Duration::from_secs(2),
            "slowest answer {slowest:?}"
        );
        signal(frozen.process.pid(), "CONT");
    })
    .await;
}

#[tokio::test]
async fn a_single_server_takes_no_forwarded_requests() {
    within(STEP, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let tunnel = tunnel(&app.url).await;
        let response = sender()
            .post(&tunnel.webhook_url)
            .header("X-Wow-Peer", "v1 handoff 1700000000 00")
            .header("X-Wow-Peer-Delivery", uuid::Uuid::new_v4().to_string())
            .header("X-Forwarded-For", "6.6.6.6")
            .body("plain")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = app.request().await;
        assert_eq!(seen.body, b"plain");
        assert!(
            seen.headers
                .iter()
                .all(|(name, _)| !name.starts_with("x-wow-peer"))
        );
        assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert!(seen.header("x-wow-redelivered").is_none());
    })
    .await;
}
