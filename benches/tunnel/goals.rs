//! The performance goals of issue 8, judged against a run's figures.
//! A goal the run did not measure (a `--only` run, or fewer channels in
//! `--quick`) says so instead of passing or failing.

use crate::report::{Goal, Report, Route, median};

/// Requests per second through wow at concurrency 64.
const MIN_RPS_C64: f64 = 20_000.0;
/// p99 through wow at concurrency 64, in milliseconds.
const MAX_P99_C64_MS: f64 = 5.0;
/// Median latency wow adds at concurrency 1, in milliseconds.
const MAX_ADDED_P50_MS: f64 = 0.2;
/// Throughput of a 100 MiB upload through wow, in MB/s.
const MIN_MB_PER_S: f64 = 500.0;
/// Peak RSS of each wow process during large uploads, in MiB.
const MAX_PEAK_MIB: f64 = 64.0;
/// Server RSS per idle channel, in KiB.
const MAX_KIB_PER_CHANNEL: f64 = 64.0;
/// The channel count the memory goal is about.
const GOAL_CHANNELS: usize = 10_000;

/// Every goal, judged.
pub fn evaluate(report: &Report) -> Vec<Goal> {
    vec![
        c64(report),
        added_latency(report),
        large_body(report),
        idle_channels(report),
        neighbour(report),
    ]
}

fn goal(name: &str, target: &str, reached: String, met: Option<bool>) -> Goal {
    Goal {
        name: name.to_owned(),
        target: target.to_owned(),
        reached,
        met,
    }
}

fn not_measured(name: &str, target: &str) -> Goal {
    goal(name, target, "not measured".to_owned(), None)
}

fn c64(report: &Report) -> Goal {
    let (name, target) = ("small webhooks, c64, wow", "≥ 20,000 req/s and p99 < 5 ms");
    let Some(row) = report
        .small
        .iter()
        .find(|row| row.concurrency == 64 && row.route == Route::Wow)
    else {
        return not_measured(name, target);
    };
    let m = &row.measured;
    let met = m.rps >= MIN_RPS_C64 && m.p99_ms < MAX_P99_C64_MS && m.errors == 0;
    let reached = format!(
        "{:.0} req/s, p99 {:.2} ms, {} errors",
        m.rps, m.p99_ms, m.errors
    );
    goal(name, target, reached, Some(met))
}

fn added_latency(report: &Report) -> Goal {
    let (name, target) = ("small webhooks, c1, wow", "p50 added over direct < 0.2 ms");
    let Some(added) = report
        .small
        .iter()
        .find(|row| row.concurrency == 1 && row.route == Route::Wow)
        .and_then(|row| row.p50_added_ms)
    else {
        return not_measured(name, target);
    };
    let reached = format!("{added:+.3} ms");
    goal(name, target, reached, Some(added < MAX_ADDED_P50_MS))
}

fn large_body(report: &Report) -> Goal {
    let (name, target) = (
        "100 MiB upload, wow",
        "≥ 500 MB/s; server and client peak RSS < 64 MiB each",
    );
    let Some(row) = report
        .large
        .iter()
        .find(|row| row.size_mib == 100 && row.route == Route::Wow)
    else {
        return not_measured(name, target);
    };
    let server = row.server_peak_mib.unwrap_or(f64::INFINITY);
    let client = row.client_peak_mib.unwrap_or(f64::INFINITY);
    let met = row.mb_per_s >= MIN_MB_PER_S && server < MAX_PEAK_MIB && client < MAX_PEAK_MIB;
    let reached = format!(
        "{:.0} MB/s; peak RSS server {server:.1} MiB, client {client:.1} MiB",
        row.mb_per_s
    );
    goal(name, target, reached, Some(met))
}

fn idle_channels(report: &Report) -> Goal {
    let (name, target) = ("10,000 idle channels", "< 64 KiB server RSS per channel");
    let Some(row) = report.channels.iter().max_by_key(|row| row.channels) else {
        return not_measured(name, target);
    };
    let reached = format!(
        "{:.1} KiB per channel at {} channels (attached in {:.1} s)",
        row.server_kib_per_channel, row.channels, row.attach_s
    );
    // Fewer channels (a quick run) say little about 10,000: no verdict.
    let met =
        (row.channels >= GOAL_CHANNELS).then_some(row.server_kib_per_channel < MAX_KIB_PER_CHANNEL);
    goal(name, target, reached, met)
}

fn neighbour(report: &Report) -> Goal {
    let (name, target) = (
        "slow neighbour",
        "hammered p99 within 20 % or 2 ms of solo (median of 3)",
    );
    let Some(neighbour) = &report.neighbour else {
        return not_measured(name, target);
    };
    let solo = median(&neighbour.solo_p99_ms);
    let beside = median(&neighbour.beside_slow_p99_ms);
    let allowed = neighbour.allowed_ms();
    let reached = format!(
        "p99 {beside:.2} ms beside vs {solo:.2} ms solo (allowed {allowed:.2}), {} runs",
        neighbour.solo_p99_ms.len()
    );
    goal(name, target, reached, Some(beside <= allowed))
}
