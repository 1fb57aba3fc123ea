//! The four measurements of issue 8, each with fresh processes so that one
//! does not leave memory or connections behind for the next.

use std::path::Path;
use std::time::Duration;

use crate::apps::{App, Behaviour};
use crate::load::{Uploader, Wrk};
use crate::procs::hard_file_limit;
use crate::report::{ChannelsRow, LargeRow, Neighbour, Route, SmallRow, median};
use crate::rig::{Bore, Nginx, Tools, WowClient, WowServer, mib, peak_mib, rss};

/// Concurrency of the hammered channel and of the slow one.
const NEIGHBOUR_CONCURRENCY: u32 = 64;

/// How long and how much each measurement runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Length of one wrk run.
    pub duration: Duration,
    /// Length of the warm-up run on each route.
    pub warmup: Duration,
    /// Concurrencies of the small-webhook runs.
    pub concurrencies: Vec<u32>,
    /// Body sizes in MiB and how many uploads of each are timed.
    pub bodies: Vec<(usize, usize)>,
    /// Idle channel counts.
    pub channels: Vec<usize>,
    /// Solo and beside-slow runs of the neighbour test.
    pub neighbour_runs: usize,
}

impl Plan {
    /// The full run, or the `--quick` one that only proves the harness.
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                duration: Duration::from_secs(1),
                warmup: Duration::from_secs(1),
                concurrencies: vec![1, 16, 64],
                bodies: vec![(1, 3), (25, 1), (100, 1)],
                channels: vec![1, 100, 1000],
                neighbour_runs: 1,
            }
        } else {
            Plan {
                duration: Duration::from_secs(10),
                warmup: Duration::from_secs(2),
                concurrencies: vec![1, 16, 64],
                bodies: vec![(1, 30), (25, 5), (100, 5)],
                channels: vec![1, 1000, 10_000],
                neighbour_runs: 3,
            }
        }
    }
}

/// One profile named `bench` forwarding to `target`.
fn one_profile(target: std::net::SocketAddr) -> Vec<(String, String)> {
    vec![("bench".to_owned(), format!("http://{target}"))]
}

/// Small webhooks at each concurrency: direct, through wow, through bore.
pub async fn small(tools: &Tools, dir: &Path, plan: &Plan) -> anyhow::Result<Vec<SmallRow>> {
    let nginx = Nginx::start(tools, dir).await?;
    let server = WowServer::start(tools, dir).await?;
    let mut client = WowClient::start(tools, dir, &server, &one_profile(nginx.addr))?;
    client.wait_attached(1, Duration::from_secs(20)).await?;
    let bore = Bore::start(tools, nginx.addr).await?;
    let wrk = Wrk::new(&tools.wrk, dir)?;
    let routes = [
        (Route::Direct, format!("http://{}/github", nginx.addr)),
        (Route::Wow, format!("{}/github", client.url("bench")?)),
        (Route::Bore, format!("http://{}/github", bore.addr)),
    ];

    for (_, url) in &routes {
        wrk.run(url, 16, plan.warmup).await?;
    }
    let mut rows = Vec::new();
    for &concurrency in &plan.concurrencies {
        for (route, url) in &routes {
            let measured = wrk.run(url, concurrency, plan.duration).await?;
            eprintln!(
                "bench: small c{concurrency} {route:?}: {:.0} req/s, p99 {:.2} ms",
                measured.rps, measured.p99_ms
            );
            rows.push(SmallRow {
                concurrency,
                route: *route,
                measured,
                rps_vs_direct: None,
                p50_added_ms: None,
            });
        }
    }
    SmallRow::compare(&mut rows);
    Ok(rows)
}

/// Large uploads to an app that counts them: direct, through wow, through bore.
pub async fn large(tools: &Tools, dir: &Path, plan: &Plan) -> anyhow::Result<Vec<LargeRow>> {
    let sink = App::start(Behaviour::Sink).await?;
    let server = WowServer::start(tools, dir).await?;
    let mut client = WowClient::start(tools, dir, &server, &one_profile(sink.addr))?;
    client.wait_attached(1, Duration::from_secs(20)).await?;
    let bore = Bore::start(tools, sink.addr).await?;
    let uploader = Uploader::new();
    let routes = [
        (Route::Direct, format!("http://{}/upload", sink.addr)),
        (Route::Wow, format!("{}/upload", client.url("bench")?)),
        (Route::Bore, format!("http://{}/upload", bore.addr)),
    ];
    for (_, url) in &routes {
        uploader.send(url, 1 << 20).await?;
    }

    let mut rows = Vec::new();
    for &(size_mib, uploads) in &plan.bodies {
        let size = size_mib << 20;
        for (route, url) in &routes {
            let mut rates = Vec::with_capacity(uploads);
            for _ in 0..uploads {
                let took = uploader.send(url, size).await?;
                rates.push(size as f64 / took.as_secs_f64() / 1e6);
            }
            let (server_peak, client_peak) = match route {
                Route::Direct => (None, None),
                Route::Wow => (Some(peak_mib(&server.proc)), Some(peak_mib(&client.proc))),
                Route::Bore => (Some(peak_mib(&bore.server)), Some(peak_mib(&bore.local))),
            };
            let mb_per_s = median(&rates);
            eprintln!("bench: large {size_mib} MiB {route:?}: {mb_per_s:.0} MB/s");
            rows.push(LargeRow {
                size_mib,
                route: *route,
                uploads,
                mb_per_s,
                server_peak_mib: server_peak,
                client_peak_mib: client_peak,
            });
        }
    }
    Ok(rows)
}

/// Idle channels: each count on a fresh server, from one client process.
pub async fn channels(tools: &Tools, dir: &Path, plan: &Plan) -> anyhow::Result<Vec<ChannelsRow>> {
    let limit = hard_file_limit().unwrap_or(1024);
    let mut rows = Vec::new();
    for &count in &plan.channels {
        // Each side needs a socket per channel, plus its own files.
        if (count as u64) + 256 > limit {
            eprintln!("bench: skipping {count} channels: the open-files hard limit is {limit}");
            continue;
        }
        rows.push(idle_channels(tools, dir, count).await?);
    }
    Ok(rows)
}

async fn idle_channels(tools: &Tools, dir: &Path, count: usize) -> anyhow::Result<ChannelsRow> {
    let server = WowServer::start(tools, dir).await?;
    // The server's own allocations settle before the baseline is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss(&server.proc);

    // The target is never called: the channels stay idle.
    let profiles: Vec<(String, String)> = (0..count)
        .map(|index| (format!("c{index:05}"), "http://127.0.0.1:9".to_owned()))
        .collect();
    let mut client = WowClient::start(tools, dir, &server, &profiles)?;
    let limit = Duration::from_secs(60) + Duration::from_millis(20) * count as u32;
    let took = client.wait_attached(count, limit).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let server_rss = rss(&server.proc);
    let row = ChannelsRow {
        channels: count,
        attach_s: took.as_secs_f64(),
        server_kib_per_channel: server_rss.saturating_sub(baseline) as f64 / 1024.0 / count as f64,
        server_rss_mib: mib(server_rss),
        client_kib_per_channel: rss(&client.proc) as f64 / 1024.0 / count as f64,
    };
    eprintln!(
        "bench: {count} channels attached in {:.2} s, server {:.1} KiB/channel",
        row.attach_s, row.server_kib_per_channel
    );
    Ok(row)
}

/// A hammered channel alone, then beside a channel whose app takes 200 ms.
pub async fn neighbour(tools: &Tools, dir: &Path, plan: &Plan) -> anyhow::Result<Neighbour> {
    let nginx = Nginx::start(tools, dir).await?;
    let slow = App::start(Behaviour::Slow).await?;
    let server = WowServer::start(tools, dir).await?;
    let profiles = [
        ("hot".to_owned(), format!("http://{}", nginx.addr)),
        ("slow".to_owned(), format!("http://{}", slow.addr)),
    ];
    let mut client = WowClient::start(tools, dir, &server, &profiles)?;
    client.wait_attached(2, Duration::from_secs(20)).await?;
    let hot = format!("{}/github", client.url("hot")?);
    let slow_url = format!("{}/github", client.url("slow")?);
    let wrk = Wrk::new(&tools.wrk, dir)?;
    wrk.run(&hot, NEIGHBOUR_CONCURRENCY, plan.warmup).await?;

    let mut result = Neighbour {
        concurrency: NEIGHBOUR_CONCURRENCY,
        solo_p99_ms: Vec::new(),
        beside_slow_p99_ms: Vec::new(),
        solo_rps: Vec::new(),
        beside_slow_rps: Vec::new(),
        slow_rps: Vec::new(),
    };
    for _ in 0..plan.neighbour_runs {
        let solo = wrk.run(&hot, NEIGHBOUR_CONCURRENCY, plan.duration).await?;

        // The slow channel is busy from a second before until a second after.
        let background = wrk.clone();
        let slow_url = slow_url.clone();
        let slow_run = plan.duration + Duration::from_secs(2);
        let slow_load = tokio::spawn(async move {
            background
                .run(&slow_url, NEIGHBOUR_CONCURRENCY, slow_run)
                .await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let beside = wrk.run(&hot, NEIGHBOUR_CONCURRENCY, plan.duration).await?;
        let slow_measured = slow_load.await??;

        eprintln!(
            "bench: neighbour p99 solo {:.2} ms, beside slow {:.2} ms (slow: {:.0} req/s)",
            solo.p99_ms, beside.p99_ms, slow_measured.rps
        );
        result.solo_p99_ms.push(solo.p99_ms);
        result.solo_rps.push(solo.rps);
        result.beside_slow_p99_ms.push(beside.p99_ms);
        result.beside_slow_rps.push(beside.rps);
        result.slow_rps.push(slow_measured.rps);
    }
    Ok(result)
}
