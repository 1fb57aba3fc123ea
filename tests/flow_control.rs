//! Flow control with the real binaries: a 200 MiB body crosses a slow app
//! and a slow sender with bounded memory on both ends.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: u64 = 200 * 1024 * 1024;
const RATE: u64 = 20 * 1024 * 1024;
const RSS_LIMIT: u64 = 64 * 1024 * 1024;

/// Reads `total` bytes from `stream` at about [`RATE`] bytes per second.
async fn read_slowly(stream: &mut TcpStream, mut total: u64) {
    let started = Instant::now();
    let mut read: u64 = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    while total > 0 {
        let want = buffer.len().min(total as usize);
        let n = stream.read(&mut buffer[..want]).await.unwrap();
        assert!(n > 0, "connection closed early");
        total -= n as u64;
        read += n as u64;
        let due = Duration::from_secs_f64(read as f64 / RATE as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Reads an HTTP head and returns it as text.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn content_length(head: &str) -> u64 {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_and_a_slow_app_keep_memory_bounded() {
    within(Duration::from_secs(120), async {
        // The app reads the body at about 20 MiB/s.
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_url = format!("http://{}", app.local_addr().unwrap());
        let app_task = tokio::spawn(async move {
            let (mut stream, _) = app.accept().await.unwrap();
            let head = read_head(&mut stream).await;
            read_slowly(&mut stream, content_length(&head)).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
        });

        let server_state = tempfile::tempdir().unwrap();
        let client_state = tempfile::tempdir().unwrap();
        let (server, addr) = spawn_server(server_state.path(), &["--max-body", "1GiB"]).await;
        let (client, url) = spawn_client(
            &format!("http://{addr}"),
            &app_url,
            client_state.path(),
            &[],
        )
        .await;

        // The sender pushes as fast as the tunnel lets it.
        let chunk = bytes::Bytes::from(vec![0x5au8; 1024 * 1024]);
        let chunks = futures::stream::iter(
            (0..BODY / (1024 * 1024)).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        );
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(&url)
            .header("content-length", BODY.to_string())
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
        app_task.await.unwrap();

        let (server_rss, client_rss) = (server.peak_rss(), client.peak_rss());
        eprintln!(
            "peak RSS: server {} MiB, client {} MiB",
            server_rss >> 20,
            client_rss >> 20
        );
        assert!(server_rss < RSS_LIMIT, "server peak RSS {server_rss}");
        assert!(client_rss < RSS_LIMIT, "client peak RSS {client_rss}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_app_and_a_slow_sender_keep_memory_bounded() {
    within(Duration::from_secs(120), async {
        // The app answers with 200 MiB as fast as it can write.
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_url = format!("http://{}", app.local_addr().unwrap());
        let _app_task = Background(Some(tokio::spawn(async move {
            let (mut stream, _) = app.accept().await.unwrap();
            read_head(&mut stream).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![0xa5u8; 1024 * 1024];
            for _ in 0..BODY / (1024 * 1024) {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        })));

        let server_state = tempfile::tempdir().unwrap();
        let client_state = tempfile::tempdir().unwrap();
        let (server, addr) = spawn_server(server_state.path(), &[]).await;
        let (client, url) = spawn_client(
            &format!("http://{addr}"),
            &app_url,
            client_state.path(),
            &[],
        )
        .await;

        // The sender reads the answer at about 20 MiB/s.
        let mut sender = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            path_of(&url)
        );
        sender.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut sender).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(content_length(&head), BODY);
        read_slowly(&mut sender, BODY).await;

        let (server_rss, client_rss) = (server.peak_rss(), client.peak_rss());
        eprintln!(
            "peak RSS: server {} MiB, client {} MiB",
            server_rss >> 20,
            client_rss >> 20
        );
        assert!(server_rss < RSS_LIMIT, "server peak RSS {server_rss}");
        assert!(client_rss < RSS_LIMIT, "client peak RSS {client_rss}");
    })
    .await;
}
