//! The tunnel core end to end: real senders, a real server and client, and
//! a local app that checks what it gets (SPEC §4, §5).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

fn sender() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn cookie_app() -> impl Fn(&Captured) -> Reply + Send + Sync + 'static {
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
async fn every_corpus_delivery_arrives_signed_and_byte_exact() {
    within(STEP * 4, async {
        let mut app = start_app(cookie_app()).await;
        let mut tunnel = tunnel(&format!("{}/hooks", app.url)).await;
        let http = sender();

        for file in corpus() {
            let url = format!("{}/{}", tunnel.webhook_url, file.scheme);
            let mut request = http.request(file.method.parse().unwrap(), &url);
            for (name, value) in &file.headers {
                request = request.header(name, value);
            }
            let response = request.body(file.body.clone()).send().await.unwrap();

            let status = response.status().as_u16();
            let cookies: Vec<_> = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(response.headers()["x-app"], "yes");
            let body = response.text().await.unwrap();
            assert_eq!(status, 201, "{}: {body}", file.path);
            assert_eq!(
                body,
                format!("{} ok {}", file.scheme, file.sha256),
                "{}",
                file.path
            );
            assert_eq!(cookies, ["session=abc; Path=/", "theme=dark; Path=/"]);

            let seen = app.request().await;
            assert_eq!(seen.target, format!("/hooks/{}", file.scheme));
            assert_eq!(seen.body_sha256(), file.sha256, "{}", file.path);
            // The sender's headers arrive in the sender's order.
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
            assert_eq!(arrived, names, "{}", file.path);
            for (name, value) in &file.headers {
                assert_eq!(
                    seen.header(&name.to_ascii_lowercase()).as_deref(),
                    Some(value.as_str())
                );
            }
            let delivery = tunnel.client.delivery().await;
            assert_eq!(delivery.status, 201);
            assert_eq!(delivery.bytes, file.body.len() as u64);
            assert_eq!(delivery.path, format!("/hooks/{}", file.scheme));
        }
    })
    .await;
}

#[tokio::test]
async fn raw_path_query_and_repeated_headers_are_untouched() {
    within(STEP, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let tunnel = tunnel(&format!("{}/target/base", app.url)).await;
        let path = path_of(&tunnel.webhook_url);
        let request = format!(
            "POST {path}/a%2Fb/c;v=1?x=1&x=2&y=&z=%2F+%20 HTTP/1.1\r\n\
             Host: hooks.example.com\r\n\
             X-Custom: one\r\n\
             Content-Type: text/plain\r\n\
             X-Custom: two\r\n\
             Content-Length: 5\r\n\
             Connection: close\r\n\r\nhello"
        );
        let (status, _) = raw_http(tunnel.server.addr, request.as_bytes()).await;
        assert_eq!(status, 200);

        let seen = app.request().await;
        assert_eq!(seen.target, "/target/base/a%2Fb/c;v=1?x=1&x=2&y=&z=%2F+%20");
        assert_eq!(seen.all("x-custom"), ["one", "two"]);
        assert_eq!(seen.header("host").unwrap(), app.addr.to_string());
        assert_eq!(
            seen.header("x-forwarded-host").unwrap(),
            "hooks.example.com"
        );
        assert_eq!(seen.header("x-forwarded-proto").unwrap(), "http");
        assert_eq!(seen.header("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(seen.header("x-forwarded-prefix").unwrap(), path);
        assert!(seen.header("x-wow-delivery-id").is_some());
        assert!(seen.header("connection").is_none());
        assert_eq!(seen.body, b"hello");
    })
    .await;
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_senders_are_replaced_and_trusted_ones_extended() {
    within(STEP, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let untrusted = tunnel(&app.url).await;
        let spoof = |url: &str| {
            sender()
                .post(url)
                .header("X-Forwarded-For", "6.6.6.6")
                .header("X-Forwarded-Host", "evil.example")
                .header("X-Forwarded-Proto", "https")
                .header("X-Real-IP", "6.6.6.6")
                .header("Forwarded", "for=6.6.6.6")
                .body("x")
                .send()
        };
        spoof(&untrusted.webhook_url).await.unwrap();
        let seen = app.request().await;
        assert_eq!(seen.header("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(seen.header("x-forwarded-proto").unwrap(), "http");
        assert_ne!(seen.header("x-forwarded-host").unwrap(), "evil.example");
        assert!(seen.header("x-real-ip").is_none());
        assert!(seen.header("forwarded").is_none());

        let trusted = tunnel_with(&app.url, |config| {
            config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        })
        .await;
        spoof(&trusted.webhook_url).await.unwrap();
        let seen = app.request().await;
        assert_eq!(
            seen.header("x-forwarded-for").unwrap(),
            "6.6.6.6, 127.0.0.1"
        );
        assert_eq!(seen.header("x-forwarded-host").unwrap(), "evil.example");
        assert_eq!(seen.header("x-forwarded-proto").unwrap(), "https");
    })
    .await;
}

#[tokio::test]
async fn every_method_crosses_with_its_body() {
    within(STEP, async {
        let mut app = start_app(|request| {
            Reply::new(200, format!("{} {}", request.method, request.body.len()))
                .header("X-Method", &request.method)
        })
        .await;
        let tunnel = tunnel(&app.url).await;
        let http = sender();
        for method in ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "POST"] {
            let body = if method == "GET" {
                Vec::new()
            } else {
                vec![7u8; 1000]
            };
            let response = http
                .request(method.parse().unwrap(), &tunnel.webhook_url)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{method}");
            assert_eq!(
                response.text().await.unwrap(),
                format!("{method} {}", body.len())
            );
            let seen = app.request().await;
            assert_eq!(seen.method, method);
            assert_eq!(seen.body, body);
        }

        let head = http.head(&tunnel.webhook_url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["x-method"], "HEAD");
        assert_eq!(head.bytes().await.unwrap().len(), 0);
        assert_eq!(app.request().await.method, "HEAD");
    })
    .await;
}

#[tokio::test]
async fn empty_chunked_and_large_bodies_arrive_byte_exact() {
    within(STEP * 2, async {
        let mut app = start_app(|request| Reply::new(200, request.body_sha256())).await;
        let tunnel = tunnel(&app.url).await;
        let path = path_of(&tunnel.webhook_url);

        // Empty body with Content-Length: 0.
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, _) = raw_http(tunnel.server.addr, request.as_bytes()).await;
        assert_eq!(status, 200);
        let seen = app.request().await;
        assert!(seen.body.is_empty());
        assert_eq!(seen.header("content-length").as_deref(), Some("0"));

        // Chunked without a length: the app gets every byte, still chunked.
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
        );
        let (status, _) = raw_http(tunnel.server.addr, request.as_bytes()).await;
        assert_eq!(status, 200);
        let seen = app.request().await;
        assert_eq!(seen.body, b"hello, world");
        assert!(seen.header("content-length").is_none());

        // 20 MiB of binary that is not UTF-8, with NULs and CRLFs, declared gzip.
        let body: Vec<u8> = (0..20 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let digest = hex::encode(Sha256::digest(&body));
        let response = sender()
            .post(&tunnel.webhook_url)
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), digest);
        let seen = app.request().await;
        assert_eq!(seen.body_sha256(), digest);
        assert_eq!(seen.header("content-encoding").as_deref(), Some("gzip"));
    })
    .await;
}

#[tokio::test]
async fn responses_without_bodies_and_large_responses_come_back_whole() {
    within(STEP, async {
        let big: Arc<Vec<u8>> = Arc::new((0..5_000_000u32).map(|i| (i % 253) as u8).collect());
        let served = big.clone();
        let app = start_app(move |request| match request.target.as_str() {
            "/204" => Reply::new(204, ""),
            "/304" => Reply::new(304, "").header("ETag", "\"v1\""),
            _ => Reply::new(200, served.as_slice().to_vec()),
        })
        .await;
        let tunnel = tunnel(&app.url).await;
        let http = sender();

        let response = http
            .get(format!("{}/204", tunnel.webhook_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        assert!(response.bytes().await.unwrap().is_empty());
        let response = http
            .get(format!("{}/304", tunnel.webhook_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 304);
        assert_eq!(response.headers()["etag"], "\"v1\"");
        let response = http
            .get(format!("{}/big", tunnel.webhook_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-length"], "5000000");
        assert_eq!(response.bytes().await.unwrap().as_ref(), big.as_slice());
    })
    .await;
}

#[tokio::test]
async fn five_hundred_concurrent_requests_on_two_channels_never_cross() {
    within(STEP * 2, async {
        let app_a = start_app(|request| {
            Reply::new(200, format!("A {}", String::from_utf8_lossy(&request.body)))
        })
        .await;
        let app_b = start_app(|request| {
            Reply::new(200, format!("B {}", String::from_utf8_lossy(&request.body)))
        })
        .await;
        let server = start_server(|_| {}).await;
        let state = tempfile::tempdir().unwrap();
        let mut config = client_config(&server.url, &app_a.url, state.path());
        config.profiles = vec![
            profile("a", &server.url, &app_a.url),
            profile("b", &server.url, &app_b.url),
        ];
        let mut client = start_client(config);
        let first = client.attached().await;
        let second = client.attached().await;
        // Which URL belongs to which profile is learnt from the answers.
        let probe = sender()
            .post(&first)
            .body("probe")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (url_a, url_b) = if probe.starts_with('A') {
            (first, second)
        } else {
            (second, first)
        };

        let http = sender();
        let mut requests = Vec::new();
        for i in 0..500 {
            let (url, name) = if i % 2 == 0 {
                (url_a.clone(), "A")
            } else {
                (url_b.clone(), "B")
            };
            let http = http.clone();
            requests.push(tokio::spawn(async move {
                let body = format!("request {i}");
                let answer = http.post(&url).body(body.clone()).send().await.unwrap();
                assert_eq!(answer.status(), 200);
                assert_eq!(answer.text().await.unwrap(), format!("{name} {body}"));
            }));
        }
        for request in requests {
            request.await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_app_is_502_and_a_slow_one_504_while_the_tunnel_keeps_serving() {
    within(STEP, async {
        // An address nothing listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let dead = tunnel(&dead_url).await;
        let response = sender()
            .post(&dead.webhook_url)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "the local app is unreachable");
        assert!(
            !body.to_string().contains("127.0.0.1"),
            "no internal detail: {body}"
        );

        let slow_calls = Arc::new(AtomicUsize::new(0));
        let calls = slow_calls.clone();
        let app = start_app(move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::new(200, "late").after(Duration::from_secs(3))
            } else {
                Reply::new(200, "on time")
            }
        })
        .await;
        let server = start_server(|_| {}).await;
        let state = tempfile::tempdir().unwrap();
        let mut config = client_config(&server.url, &app.url, state.path());
        config.profiles[0].timeout = Some(Duration::from_millis(500));
        let mut client = start_client(config);
        let url = client.attached().await;
        let response = sender().post(&url).body("x").send().await.unwrap();
        assert_eq!(response.status(), 504);
        assert_eq!(client.delivery().await.status, 504);
        let response = sender().post(&url).body("x").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "on time");
    })
    .await;
}

#[tokio::test]
async fn bodies_over_max_body_get_413_seen_by_the_sender() {
    within(STEP * 2, async {
        let mut app = start_app(|_| Reply::new(200, "ok")).await;
        let mut tunnel = tunnel(&app.url).await;
        let body = vec![b'x'; 30 * 1024 * 1024];

        // With Content-Length: answered before anything is forwarded.
        let response = sender()
            .post(&tunnel.webhook_url)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"], "request body too large");

        // Chunked: the forwarded request is aborted, then 413.
        let chunks = futures::stream::iter(
            body.chunks(1 << 20)
                .map(|chunk| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(chunk)))
                .collect::<Vec<_>>(),
        );
        let response = sender()
            .post(&tunnel.webhook_url)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);

        // The app saw at most an aborted request; the next one is whole.
        let response = sender()
            .post(&tunnel.webhook_url)
            .body("small")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut seen = app.request().await;
        while seen.aborted {
            seen = app.request().await;
        }
        // The client's lines say what the sender got, not an app failure.
        let mut statuses = [
            tunnel.client.delivery().await.status,
            tunnel.client.delivery().await.status,
        ];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 413]);
        assert_eq!(seen.body, b"small");
    })
    .await;
}

#[tokio::test]
async fn a_200_kb_header_gets_431() {
    within(STEP, async {
        let app = start_app(|_| Reply::new(200, "ok")).await;
        let tunnel = tunnel(&app.url).await;
        let path = path_of(&tunnel.webhook_url);
        let huge = "a".repeat(200 * 1024);
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let (status, _) = raw_http(tunnel.server.addr, request.as_bytes()).await;
        assert_eq!(status, 431);

        let large = "a".repeat(80 * 1024);
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Large: {large}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let (status, response) = raw_http(tunnel.server.addr, request.as_bytes()).await;
        assert_eq!(status, 431);
        assert!(response.contains("request headers too large"), "{response}");
    })
    .await;
}

#[tokio::test]
async fn nothing_in_a_request_reaches_another_host() {
    within(STEP, async {
        let mut app = start_app(|request| Reply::new(200, request.target.clone())).await;
        // A second app plays the host an attacker would like to reach.
        let mut other = start_app(|_| Reply::new(200, "reached the wrong host")).await;
        let tunnel = tunnel(&format!("{}/app", app.url)).await;
        let path = path_of(&tunnel.webhook_url);
        let victim = other.addr;

        let attempts = [
            format!("POST http://{victim}{path}/x HTTP/1.1\r\nHost: {victim}\r\n"),
            format!("POST {path}//{victim}/x HTTP/1.1\r\nHost: {victim}\r\n"),
            format!("POST {path}/@{victim}/x HTTP/1.1\r\nHost: x\r\n"),
            format!("POST {path}/x@{victim}/y HTTP/1.1\r\nHost: x\r\n"),
        ];
        for head in &attempts {
            let request = format!("{head}Content-Length: 0\r\nConnection: close\r\n\r\n");
            let (status, response) = raw_http(tunnel.server.addr, request.as_bytes()).await;
            assert_eq!(status, 200, "{head}: {response}");
            let seen = app.request().await;
            assert!(seen.target.starts_with("/app/"), "{}", seen.target);
            assert_eq!(seen.header("host").unwrap(), app.addr.to_string());
        }
        for dots in ["/../x", "/a/%2e%2e/x", "/./x"] {
            let request = format!("POST {path}{dots} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let (status, _) = raw_http(tunnel.server.addr, request.as_bytes()).await;
            assert_eq!(status, 400, "{dots}");
        }
        assert!(other.requests.try_recv().is_err(), "the other host was reached");
    })
    .await;
}

#[tokio::test]
async fn unknown_and_offline_channels_get_404_and_503() {
    within(STEP, async {
        let server = start_server(|_| {}).await;
        let http = sender();
        let response = http
            .post(format!(
                "{}/webhook/7d1e0c2a-0000-4000-8000-000000000000/x",
                server.url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let response = http
            .post(format!("{}/webhook/not-a-uuid", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);

        let issued: serde_json::Value = http
            .get(format!("{}/new?offline=reject", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = issued["webhook_url"].as_str().unwrap();
        assert_eq!(
            url,
            format!(
                "{}/webhook/{}",
                server.url,
                issued["channel_id"].as_str().unwrap()
            )
        );
        let response = http.post(url).body("x").send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"], "no client is attached to this channel");
        let bad = http
            .get(format!("{}/new?offline=maybe", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);

        let health: serde_json::Value = http
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
        let missing = http
            .get(format!("{}/nothing-here", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.headers()["content-type"], "application/json");
    })
    .await;
}

#[tokio::test]
async fn a_tunnel_lost_mid_response_is_an_error_for_the_sender_not_a_short_body() {
    within(STEP, async {
        // An app that sends half of what it announced, then stalls.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_url = format!("http://{}", listener.local_addr().unwrap());
        let _app = Background(Some(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'a'; 100_000]).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        })));
        let tunnel = tunnel(&app_url).await;
        let response = sender()
            .post(&tunnel.webhook_url)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut response = response;
        let first = response.chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());

        // The client vanishes without a goodbye.
        drop(tunnel.client);
        let mut received = first.len();
        let outcome = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => received += chunk.len(),
                Ok(None) => break Ok(received),
                Err(error) => break Err(error),
            }
        };
        assert!(
            outcome.is_err(),
            "a cut body must not look complete: {outcome:?}"
        );
    })
    .await;
}
