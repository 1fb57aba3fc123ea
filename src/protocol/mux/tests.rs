use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use http::{Method, StatusCode};

use super::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("test step timed out")
}

/// A server and a client multiplexer wired back to back, frames decoded on
/// the way as a WebSocket peer would.
struct Pair {
    server: Multiplexer,
    client: Multiplexer,
    incoming: mpsc::UnboundedReceiver<IncomingRequest>,
}

fn pair(max_streams: usize) -> Pair {
    let (server, mut to_client) = Multiplexer::new(Side::Server, max_streams);
    let (client, mut to_server) = Multiplexer::new(Side::Client, max_streams);
    let (incoming_tx, incoming) = mpsc::unbounded_channel();

    let client_side = client.clone();
    tokio::spawn(async move {
        while let Some(bytes) = to_client.recv().await {
            let message = ServerMessage::decode(bytes).expect("server frames decode");
            if let Some(request) = client_side.receive_server_message(message).unwrap() {
                let _ = incoming_tx.send(request);
            }
        }
        client_side.close();
    });
    let server_side = server.clone();
    tokio::spawn(async move {
        while let Some(bytes) = to_server.recv().await {
            let message = ClientMessage::decode(bytes).expect("client frames decode");
            server_side.receive_client_message(message).unwrap();
        }
        server_side.close();
    });
    Pair {
        server,
        client,
        incoming,
    }
}

async fn read_all(mut body: InboundBody) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn patterned(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

#[tokio::test]
async fn request_and_response_bodies_cross_intact() {
    let mut pair = pair(16);
    let request_body = patterned(3 * MAX_DATA_LEN + 17);
    let response_body = patterned(1000);

    let outgoing = pair
        .server
        .open(&RequestHead::new(Method::POST, "/x"))
        .unwrap();
    let upload = {
        let stream = outgoing.stream.clone();
        let body = request_body.clone();
        tokio::spawn(async move {
            stream.send_data(body).await.unwrap();
            stream.finish();
        })
    };

    let incoming = within(pair.incoming.recv()).await.unwrap();
    assert_eq!(incoming.head.path, "/x");
    assert_eq!(within(read_all(incoming.body)).await.unwrap(), request_body);
    let mut head = ResponseHead::new(StatusCode::ACCEPTED);
    head.headers
        .append("content-length", "1000".parse().unwrap());
    incoming.stream.send_response(&head);
    incoming
        .stream
        .send_data(response_body.clone())
        .await
        .unwrap();
    incoming.stream.finish();
    drop(incoming.stream);

    let (head, body) = within(outgoing.response.recv()).await.unwrap();
    assert_eq!(head.status, StatusCode::ACCEPTED);
    assert_eq!(Body::size_hint(&body).exact(), Some(1000));
    assert_eq!(within(read_all(body)).await.unwrap(), response_body);
    within(upload).await.unwrap();
    drop(outgoing.stream);
    within(async {
        while pair.server.active_streams() + pair.client.active_streams() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_sender_cannot_run_ahead_of_an_unread_body() {
    let mut pair = pair(16);
    let outgoing = pair
        .server
        .open(&RequestHead::new(Method::POST, ""))
        .unwrap();
    let stream = outgoing.stream.clone();
    let upload = tokio::spawn(async move { stream.send_data(patterned(4 * 1024 * 1024)).await });
    let incoming = within(pair.incoming.recv()).await.unwrap();

    // With nobody reading, exactly one window crosses and the upload waits.
    within(async {
        while outgoing.stream.inner.send_credit.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    tokio::task::yield_now().await;
    assert!(!upload.is_finished());

    // Reading the body returns credit, and everything arrives.
    let received = within(async {
        let mut body = incoming.body;
        let mut total = 0;
        while total < 4 * 1024 * 1024 {
            total += body.next().await.unwrap().unwrap().len();
        }
        total
    })
    .await;
    assert_eq!(received, 4 * 1024 * 1024);
    within(upload).await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_every_handle_resets_the_stream_for_the_peer() {
    let mut pair = pair(16);
    let outgoing = pair
        .server
        .open(&RequestHead::new(Method::GET, ""))
        .unwrap();
    let incoming = within(pair.incoming.recv()).await.unwrap();
    drop(incoming);

    let error = within(outgoing.response.recv()).await.unwrap_err();
    assert!(matches!(
        error,
        StreamError::Reset {
            code: ResetCode::Cancel,
            ..
        }
    ));
    // The server's upload stops too.
    assert_eq!(
        outgoing.stream.send_data(patterned(10)).await,
        Err(StreamError::Closed)
    );
}

#[tokio::test]
async fn a_reset_before_the_head_carries_its_code() {
    let mut pair = pair(16);
    let outgoing = pair
        .server
        .open(&RequestHead::new(Method::GET, ""))
        .unwrap();
    let incoming = within(pair.incoming.recv()).await.unwrap();
    incoming
        .stream
        .reset(ResetCode::AppUnreachable, "connection refused");
    let error = within(outgoing.response.recv()).await.unwrap_err();
    assert_eq!(
        error,
        StreamError::Reset {
            code: ResetCode::AppUnreachable,
            reason: "connection refused".into()
        }
    );
}

#[tokio::test]
async fn losing_the_connection_fails_waiting_streams_and_refuses_new_ones() {
    let mut pair = pair(16);
    let outgoing = pair
        .server
        .open(&RequestHead::new(Method::GET, ""))
        .unwrap();
    let incoming = within(pair.incoming.recv()).await.unwrap();
    pair.server.close();
    let error = within(outgoing.response.recv()).await.unwrap_err();
    assert_eq!(
        error,
        StreamError::ConnectionLost {
            acknowledged: false
        }
    );
    assert_eq!(
        pair.server
            .open(&RequestHead::new(Method::GET, ""))
            .unwrap_err(),
        OpenError::Closed
    );
    pair.client.close();
    let body_error = within(read_all(incoming.body)).await.unwrap_err();
    assert_eq!(
        body_error,
        StreamError::ConnectionLost { acknowledged: true }
    );
}

#[tokio::test]
async fn a_truncated_response_body_ends_in_an_error_not_a_short_success() {
    let mut pair = pair(16);
    let outgoing = pair
        .server
        .open(&RequestHead::new(Method::GET, ""))
        .unwrap();
    outgoing.stream.finish();
    let incoming = within(pair.incoming.recv()).await.unwrap();
    incoming
        .stream
        .send_response(&ResponseHead::new(StatusCode::OK));
    incoming.stream.send_data(patterned(100)).await.unwrap();
    let (_, body) = within(outgoing.response.recv()).await.unwrap();
    incoming
        .stream
        .reset(ResetCode::AppFailed, "app closed early");
    assert!(within(read_all(body)).await.is_err());
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let pair = pair(2);
    let first = pair
        .server
        .open(&RequestHead::new(Method::GET, ""))
        .unwrap();
    let _second = pair
        .server
        .open(&RequestHead::new(Method::GET, ""))
        .unwrap();
    assert_eq!(
        pair.server
            .open(&RequestHead::new(Method::GET, ""))
            .unwrap_err(),
        OpenError::Busy
    );
    first.stream.reset(ResetCode::Cancel, "done");
    assert!(pair.server.open(&RequestHead::new(Method::GET, "")).is_ok());
}

#[tokio::test]
async fn data_beyond_the_window_resets_the_stream() {
    let (client, mut frames) = Multiplexer::new(Side::Client, 4);
    let request = ServerMessage::Request {
        stream: 5,
        head: RequestHead::new(Method::POST, ""),
    };
    let incoming = client.receive_server_message(request).unwrap().unwrap();
    let chunk = patterned(MAX_DATA_LEN);
    for _ in 0..(INITIAL_WINDOW as usize / MAX_DATA_LEN + 1) {
        let data = StreamFrame::Data {
            stream: 5,
            data: chunk.clone(),
        };
        client
            .receive_server_message(ServerMessage::Stream(data))
            .unwrap();
    }
    let reset = ClientMessage::decode(frames.recv().await.unwrap()).unwrap();
    assert!(matches!(
        reset,
        ClientMessage::Stream(StreamFrame::Reset {
            code: ResetCode::FlowControl,
            ..
        })
    ));
    assert!(within(read_all(incoming.body)).await.is_err());
}

#[tokio::test]
async fn a_client_refuses_a_reused_stream_id() {
    let (client, _frames) = Multiplexer::new(Side::Client, 4);
    let request = || ServerMessage::Request {
        stream: 1,
        head: RequestHead::new(Method::GET, ""),
    };
    let _first = client.receive_server_message(request()).unwrap();
    assert!(client.receive_server_message(request()).is_err());
}

#[tokio::test]
async fn many_streams_interleave_without_crossing() {
    let mut pair = pair(512);
    let mut waiters = Vec::new();
    for i in 0..200u32 {
        let outgoing = pair
            .server
            .open(&RequestHead::new(Method::POST, format!("/{i}")))
            .unwrap();
        let stream = outgoing.stream.clone();
        tokio::spawn(async move {
            stream
                .send_data(Bytes::from(format!("body {i}")))
                .await
                .unwrap();
            stream.finish();
        });
        waiters.push((i, outgoing));
    }
    let answer = tokio::spawn(async move {
        for _ in 0..200 {
            let incoming = pair.incoming.recv().await.unwrap();
            tokio::spawn(async move {
                let body = read_all(incoming.body).await.unwrap();
                incoming
                    .stream
                    .send_response(&ResponseHead::new(StatusCode::OK));
                let echo = format!(
                    "{} -> {}",
                    incoming.head.path,
                    String::from_utf8(body).unwrap()
                );
                incoming.stream.send_data(Bytes::from(echo)).await.unwrap();
                incoming.stream.finish();
            });
        }
    });
    for (i, outgoing) in waiters {
        let (_, body) = within(outgoing.response.recv()).await.unwrap();
        let body = within(read_all(body)).await.unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("/{i} -> body {i}")
        );
    }
    within(answer).await.unwrap();
}
