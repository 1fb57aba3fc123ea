//! Load: wrk for small webhooks (a Lua script gives it the body, the
//! headers and a JSON summary with exact percentiles), and a client of our
//! own for large bodies.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::process::Command;

/// Size of the small webhook body, in bytes.
pub const SMALL_BODY: usize = 2048;

/// Marks the summary line the Lua script prints.
const SUMMARY_MARK: &str = "WRK_JSON ";

/// What one wrk run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Socket errors, timeouts and answers other than 2xx/3xx.
    pub errors: u64,
}

/// wrk with the small-webhook script.
#[derive(Debug, Clone)]
pub struct Wrk {
    program: PathBuf,
    script: PathBuf,
}

impl Wrk {
    /// Writes the Lua script into `dir`.
    pub fn new(program: &Path, dir: &Path) -> anyhow::Result<Wrk> {
        let script = dir.join("webhook.lua");
        std::fs::write(&script, lua_script(&github_push_body()))?;
        Ok(Wrk {
            program: program.to_owned(),
            script,
        })
    }

    /// Sends webhooks to `url` over `connections` kept-alive connections
    /// for `duration` (whole seconds, as wrk counts).
    pub async fn run(
        &self,
        url: &str,
        connections: u32,
        duration: Duration,
    ) -> anyhow::Result<Measured> {
        // wrk runs one event loop per thread; two threads at most on a 2-core machine.
        let threads = connections.clamp(1, 2);
        let output = Command::new(&self.program)
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .args(["--timeout", "10s", "-s"])
            .arg(&self.script)
            .arg(url)
            .kill_on_drop(true)
            .output()
            .await
            .context("cannot run wrk")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(line) = stdout
            .lines()
            .find_map(|line| line.strip_prefix(SUMMARY_MARK))
        else {
            bail!(
                "wrk printed no summary for {url}: {}{}",
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        };
        parse_summary(line)
    }
}

fn parse_summary(line: &str) -> anyhow::Result<Measured> {
    let summary: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("unreadable wrk summary {line}"))?;
    let number = |key: &str| {
        summary
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    let requests = number("requests") as u64;
    let seconds = number("duration_us") / 1e6;
    if requests == 0 || seconds <= 0.0 {
        bail!("wrk completed no request: {line}");
    }
    let errors = ["connect", "read", "write", "timeout", "status"]
        .iter()
        .map(|key| number(key) as u64)
        .sum();
    Ok(Measured {
        requests,
        rps: requests as f64 / seconds,
        p50_ms: number("p50") / 1000.0,
        p90_ms: number("p90") / 1000.0,
        p99_ms: number("p99") / 1000.0,
        errors,
    })
}

/// A 2,048-byte JSON body shaped like GitHub's `push` event.
pub fn github_push_body() -> String {
    let head = r#"{"ref":"refs/heads/main","before":"9049f1265b7d61be4a8904a9a27120d2064dab3b","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","repository":{"id":35129377,"node_id":"MDEwOlJlcG9zaXRvcnkzNTEyOTM3Nw==","name":"public-repo","full_name":"baxterthehacker/public-repo","private":false,"owner":{"name":"baxterthehacker","email":"baxterthehacker@users.noreply.github.com","login":"baxterthehacker","id":6752317,"type":"User","site_admin":false},"html_url":"https://github.com/baxterthehacker/public-repo","default_branch":"main"},"pusher":{"name":"baxterthehacker","email":"baxterthehacker@users.noreply.github.com"},"sender":{"login":"baxterthehacker","id":6752317,"type":"User"},"head_commit":{"id":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","tree_id":"f9d2a07e9488b91af2641b26b9407fe22a451433","distinct":true,"timestamp":"2026-11-04T16:01:03Z","author":{"name":"baxterthehacker","email":"baxterthehacker@users.noreply.github.com","username":"baxterthehacker"},"added":["README.md"],"removed":[],"modified":[]},"message":""#;
    let tail = r#""}"#;
    let filler = SMALL_BODY.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(SMALL_BODY);
    body.push_str(head);
    body.extend(std::iter::repeat_n('x', filler));
    body.push_str(tail);
    body
}

/// The wrk script: a POST with GitHub's headers (fixed signatures: the app
/// does not check them) and a summary line with exact percentiles.
fn lua_script(body: &str) -> String {
    format!(
        r#"wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "*/*"
wrk.headers["User-Agent"] = "GitHub-Hookshot/2d4ba4b"
wrk.headers["X-GitHub-Delivery"] = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-GitHub-Hook-ID"] = "292430182"
wrk.headers["X-GitHub-Hook-Installation-Target-ID"] = "79929171"
wrk.headers["X-GitHub-Hook-Installation-Target-Type"] = "repository"
wrk.headers["X-Hub-Signature"] = "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"
wrk.headers["X-Hub-Signature-256"] = "sha256=d57c68ca6f92289e6987922ff26938930f6e66a2d161ef06abdf1859230aa23c"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{SUMMARY_MARK}{{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d,"p50":%.1f,"p90":%.1f,"p99":%.1f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"#
    )
}

/// Sends large bodies and times them.
#[derive(Debug, Clone)]
pub struct Uploader {
    client: Client<HttpConnector, StreamBody<BodyChunks>>,
    chunk: Bytes,
}

type BodyChunks = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// Bytes per chunk the uploader hands to hyper (1 MiB, shared, never copied).
const CHUNK: usize = 1 << 20;

impl Uploader {
    /// A client with nothing sent yet.
    pub fn new() -> Uploader {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Uploader {
            client: Client::builder(TokioExecutor::new()).build(connector),
            chunk: Bytes::from(vec![0x5a; CHUNK]),
        }
    }

    /// POSTs `size` bytes to `url` and waits for the whole answer; checks
    /// that the app counted every byte. Returns the time it took.
    pub async fn send(&self, url: &str, size: usize) -> anyhow::Result<Duration> {
        let chunks: Vec<_> = (0..size.div_ceil(CHUNK))
            .map(|index| {
                let len = CHUNK.min(size - index * CHUNK);
                Ok(Frame::data(self.chunk.slice(..len)))
            })
            .collect();
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(StreamBody::new(futures::stream::iter(chunks)))?;

        let started = Instant::now();
        let response = self.client.request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        if !status.is_success() {
            bail!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let received = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|answer| answer.get("received")?.as_u64());
        if received != Some(size as u64) {
            bail!("the app counted {received:?} of {size} bytes");
        }
        Ok(elapsed)
    }
}
