//! A small local app that answers every request with a JSON description of
//! it: what `wow-client echo` runs, for trying a tunnel without an app.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use warp::path::FullPath;
use warp::{Filter, Reply};

/// Bodies larger than this are counted, not echoed, in bytes (64 KiB).
const ECHOED_BODY_MAX: usize = 64 * 1024;

/// Serves the echo app on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) {
    let route = warp::method()
        .and(warp::path::full())
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(describe);
    warp::serve(route)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

fn describe(
    method: Method,
    path: FullPath,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> warp::reply::Response {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let text = (body.len() <= ECHOED_BODY_MAX)
        .then(|| std::str::from_utf8(&body).ok())
        .flatten();
    let description = json!({
        "method": method.as_str(),
        "path": path.as_str(),
        "query": query,
        "headers": headers,
        "body_bytes": body.len(),
        "body": text,
    });
    warp::reply::with_status(warp::reply::json(&description), StatusCode::OK).into_response()
}
