//! Local apps nginx cannot play, served from the harness itself: a sink
//! that counts a large body before it answers, and an app that takes
//! 200 ms per request (the slow neighbour).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long the slow app takes per request.
pub const SLOW_DELAY: Duration = Duration::from_millis(200);

/// What an app does with a request.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Reads the whole body, then answers `{"received": <bytes>}`.
    Sink,
    /// Reads the body, waits [`SLOW_DELAY`], then answers `{"ok":true}`.
    Slow,
}

/// An app on a loopback port; stops when dropped.
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    /// Starts the app on 127.0.0.1:0.
    pub async fn start(behaviour: Behaviour) -> anyhow::Result<App> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept(listener, behaviour));
        Ok(App { addr, task })
    }
}

async fn accept(listener: TcpListener, behaviour: Behaviour) {
    // Connections end with the harness; an accept error only skips one.
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _nodelay = stream.set_nodelay(true);
        let service = service_fn(move |request| answer(request, behaviour));
        tokio::spawn(async move {
            let _closed = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    behaviour: Behaviour,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = request.into_body();
    let mut received: u64 = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
        }
    }
    let text = match behaviour {
        Behaviour::Sink => format!("{{\"received\":{received}}}"),
        Behaviour::Slow => {
            tokio::time::sleep(SLOW_DELAY).await;
            "{\"ok\":true}".to_owned()
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
