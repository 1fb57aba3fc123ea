//! What a run found: the four measurements, the goals, and the machine,
//! written as a table, as JSON and as the Markdown of `bench/RESULTS.md`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::load::Measured;

/// Where a small webhook went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Straight to the app.
    Direct,
    /// Through wow-server and wow-client.
    Wow,
    /// Through bore, a raw TCP tunnel.
    Bore,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Wow => "wow",
            Route::Bore => "bore",
        }
    }
}

/// One wrk run of small webhooks.
#[derive(Debug, Clone, Serialize)]
pub struct SmallRow {
    /// Connections kept busy.
    pub concurrency: u32,
    /// The route.
    pub route: Route,
    /// What wrk measured.
    #[serde(flatten)]
    pub measured: Measured,
    /// Requests per second as a share of the direct route's.
    pub rps_vs_direct: Option<f64>,
    /// Median latency added over the direct route, in milliseconds.
    pub p50_added_ms: Option<f64>,
}

/// Large bodies of one size along one route.
#[derive(Debug, Clone, Serialize)]
pub struct LargeRow {
    /// Body size, in MiB.
    pub size_mib: usize,
    /// The route.
    pub route: Route,
    /// Uploads timed.
    pub uploads: usize,
    /// Median throughput, in MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
    /// Peak RSS of the relay side (wow-server, bore server) so far, in MiB.
    pub server_peak_mib: Option<f64>,
    /// Peak RSS of the local side (wow-client, bore local) so far, in MiB.
    pub client_peak_mib: Option<f64>,
}

/// Idle channels held on one server.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelsRow {
    /// Channels attached.
    pub channels: usize,
    /// From the client's start until every channel was attached, in seconds.
    pub attach_s: f64,
    /// Server RSS growth per channel, in KiB.
    pub server_kib_per_channel: f64,
    /// Server RSS with every channel attached, in MiB.
    pub server_rss_mib: f64,
    /// Client RSS divided by the channels it holds, in KiB.
    pub client_kib_per_channel: f64,
}

/// The hammered channel's p99 alone and beside a slow channel.
#[derive(Debug, Clone, Serialize)]
pub struct Neighbour {
    /// Connections hammering the fast channel.
    pub concurrency: u32,
    /// p99 of each solo run, in milliseconds.
    pub solo_p99_ms: Vec<f64>,
    /// p99 of each run beside the slow channel, in milliseconds.
    pub beside_slow_p99_ms: Vec<f64>,
    /// Requests per second on the fast channel, solo runs.
    pub solo_rps: Vec<f64>,
    /// Requests per second on the fast channel, beside the slow one.
    pub beside_slow_rps: Vec<f64>,
    /// Requests per second the slow channel answered meanwhile.
    pub slow_rps: Vec<f64>,
}

/// One performance goal of issue 8.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What is measured.
    pub name: String,
    /// The goal.
    pub target: String,
    /// The figure reached.
    pub reached: String,
    /// Whether the goal is met; `None` when this run did not measure it.
    pub met: Option<bool>,
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// Memory, in GiB.
    pub memory_gib: f64,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// 1, 5 and 15-minute load averages when the run started.
    pub load_before: String,
    /// And when it ended.
    pub load_after: String,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started (UTC).
    pub date: String,
    /// The commit measured (`+dirty` with uncommitted changes).
    pub commit: String,
    /// The command that reproduces the run.
    pub command: String,
    /// A `--quick` run (shorter, fewer channels): proves the harness only.
    pub quick: bool,
    /// The machine.
    pub machine: Machine,
    /// Small webhooks.
    pub small: Vec<SmallRow>,
    /// Large bodies.
    pub large: Vec<LargeRow>,
    /// Idle channels.
    pub channels: Vec<ChannelsRow>,
    /// The slow neighbour.
    pub neighbour: Option<Neighbour>,
    /// The goals and how far this run got.
    pub goals: Vec<Goal>,
}

impl SmallRow {
    /// Fills the comparisons with the direct route.
    pub fn compare(rows: &mut [SmallRow]) {
        let direct: Vec<(u32, Measured)> = rows
            .iter()
            .filter(|row| row.route == Route::Direct)
            .map(|row| (row.concurrency, row.measured.clone()))
            .collect();
        for row in rows {
            let Some((_, base)) = direct.iter().find(|(c, _)| *c == row.concurrency) else {
                continue;
            };
            row.rps_vs_direct = Some(row.measured.rps / base.rps);
            row.p50_added_ms = Some(row.measured.p50_ms - base.p50_ms);
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[middle],
        _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
    }
}

impl Neighbour {
    /// The allowed p99 beside the slow channel: 20 % or 2 ms over solo.
    pub fn allowed_ms(&self) -> f64 {
        let solo = median(&self.solo_p99_ms);
        (solo * 1.2).max(solo + 2.0)
    }
}

impl Report {
    /// The whole report as Markdown tables (also what stdout shows).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        self.write_small(&mut out);
        self.write_large(&mut out);
        self.write_channels(&mut out);
        self.write_neighbour(&mut out);
        self.write_goals(&mut out);
        out
    }

    /// `bench/RESULTS.md`: how the run was made, then the tables.
    pub fn results_file(&self) -> String {
        let machine = &self.machine;
        format!(
            "# Benchmark results\n\n\
             The latest full run of `benches/tunnel` (see README, Performance).\n\n\
             - date: {}\n- commit: {}\n- command: `{}`\n\
             - machine: {} cores ({}), {:.0} GiB, Linux {}\n\
             - load average (1, 5, 15 min): {} before, {} after\n\n{}",
            self.date,
            self.commit,
            self.command,
            machine.cores,
            machine.cpu,
            machine.memory_gib,
            machine.kernel,
            machine.load_before,
            machine.load_after,
            self.markdown()
        )
    }

    /// Writes the JSON report to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    fn write_small(&self, out: &mut String) {
        if self.small.is_empty() {
            return;
        }
        out.push_str("## Small webhooks (2 KiB JSON, GitHub headers)\n\n");
        out.push_str("| conc. | route | req/s | p50 ms | p90 ms | p99 ms | vs direct | added p50 ms | errors |\n");
        out.push_str("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &self.small {
            let m = &row.measured;
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
                row.concurrency,
                row.route.name(),
                m.rps,
                m.p50_ms,
                m.p90_ms,
                m.p99_ms,
                row.rps_vs_direct
                    .map_or("".to_owned(), |ratio| format!("{ratio:.2}×")),
                row.p50_added_ms
                    .filter(|_| row.route != Route::Direct)
                    .map_or("".to_owned(), |added| format!("{added:+.3}")),
                m.errors
            );
        }
        out.push('\n');
    }

    fn write_large(&self, out: &mut String) {
        if self.large.is_empty() {
            return;
        }
        out.push_str("## Large bodies (upload; the app counts every byte, then answers)\n\n");
        out.push_str(
            "| size | route | uploads | MB/s | relay peak RSS MiB | local peak RSS MiB |\n",
        );
        out.push_str("| ---: | --- | ---: | ---: | ---: | ---: |\n");
        for row in &self.large {
            let peak = |value: Option<f64>| value.map_or("".to_owned(), |v| format!("{v:.1}"));
            let _ = writeln!(
                out,
                "| {} MiB | {} | {} | {:.0} | {} | {} |",
                row.size_mib,
                row.route.name(),
                row.uploads,
                row.mb_per_s,
                peak(row.server_peak_mib),
                peak(row.client_peak_mib)
            );
        }
        out.push_str("\nPeak RSS is VmHWM since the process started, so each row includes the sizes above it.\n\n");
    }

    fn write_channels(&self, out: &mut String) {
        if self.channels.is_empty() {
            return;
        }
        out.push_str("## Idle channels on one server (one client process holds them all)\n\n");
        out.push_str("| channels | attach all s | server KiB/channel | server RSS MiB | client KiB/channel |\n");
        out.push_str("| ---: | ---: | ---: | ---: | ---: |\n");
        for row in &self.channels {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.1} | {:.1} | {:.1} |",
                row.channels,
                row.attach_s,
                row.server_kib_per_channel,
                row.server_rss_mib,
                row.client_kib_per_channel
            );
        }
        out.push_str("\nServer KiB/channel is the growth of VmRSS over the idle server, divided by the channels; client KiB/channel is its whole VmRSS divided by them.\n\n");
    }

    fn write_neighbour(&self, out: &mut String) {
        let Some(neighbour) = &self.neighbour else {
            return;
        };
        let list = |values: &[f64]| {
            values
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            out,
            "## Slow neighbour (c{} on one channel; the other's app takes 200 ms, c64)\n\n\
             | | p99 ms per run | median p99 ms | req/s per run |\n| --- | --- | ---: | --- |\n\
             | solo | {} | {:.2} | {} |\n| beside the slow channel | {} | {:.2} | {} |\n\n\
             The slow channel answered {} req/s meanwhile; allowed median p99: {:.2} ms.\n\n",
            neighbour.concurrency,
            list(&neighbour.solo_p99_ms),
            median(&neighbour.solo_p99_ms),
            list(&neighbour.solo_rps),
            list(&neighbour.beside_slow_p99_ms),
            median(&neighbour.beside_slow_p99_ms),
            list(&neighbour.beside_slow_rps),
            list(&neighbour.slow_rps),
            neighbour.allowed_ms()
        );
    }

    fn write_goals(&self, out: &mut String) {
        out.push_str("## Goals\n\n| goal | target | reached | met |\n| --- | --- | --- | --- |\n");
        for goal in &self.goals {
            let met = match goal.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {met} |",
                goal.name, goal.target, goal.reached
            );
        }
        out.push('\n');
    }
}
