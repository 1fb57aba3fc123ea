//! The tunnel benchmark of issue 8: `cargo bench --bench tunnel -- [--quick]`.
//!
//! Starts every piece on 127.0.0.1 (nginx as the app, wow-server and
//! wow-client as cargo built them with the bench profile, bore as the raw
//! TCP tunnel to compare with, wrk as the load) and measures side by side:
//! small webhooks at concurrency 1, 16 and 64; 1, 25 and 100 MiB uploads
//! with peak memory; 1, 1,000 and 10,000 idle channels on one server; a
//! hammered channel beside one whose app takes 200 ms. Prints a table,
//! writes `target/bench/tunnel.json`, and a full run (not `--quick`) also
//! rewrites `bench/RESULTS.md`.
//!
//! Options: `--quick` (under a minute: proves the harness, not the goals),
//! `--only small,large,channels,neighbour`, `--json PATH`.

mod apps;
mod goals;
mod load;
mod procs;
mod report;
mod rig;
mod sections;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};

use crate::report::{Machine, Report};
use crate::rig::Tools;
use crate::sections::Plan;

/// The measurements, by their `--only` names.
const SECTIONS: [&str; 4] = ["small", "large", "channels", "neighbour"];

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    quick: bool,
    only: Vec<String>,
    json: PathBuf,
    args: Vec<String>,
}

impl Options {
    fn parse(manifest_dir: &Path) -> anyhow::Result<Options> {
        let mut options = Options {
            quick: false,
            only: SECTIONS.map(str::to_owned).to_vec(),
            json: manifest_dir.join("target/bench/tunnel.json"),
            args: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes --bench to every bench target.
                "--bench" => continue,
                "--quick" => options.quick = true,
                "--only" => {
                    let list = args.next().context("--only needs a list")?;
                    options.only = list.split(',').map(str::to_owned).collect();
                    if let Some(bad) = options
                        .only
                        .iter()
                        .find(|s| !SECTIONS.contains(&s.as_str()))
                    {
                        bail!("unknown section {bad}: pick from {}", SECTIONS.join(","));
                    }
                    options.args.extend([arg.clone(), list]);
                    continue;
                }
                "--json" => {
                    options.json = args.next().context("--json needs a path")?.into();
                    continue;
                }
                other => bail!("unknown option {other}: use --quick, --only LIST, --json PATH"),
            }
            options.args.push(arg);
        }
        Ok(options)
    }

    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|name| name == section)
    }

    fn command(&self) -> String {
        let mut command = "cargo bench --bench tunnel".to_owned();
        if !self.args.is_empty() {
            command.push_str(" -- ");
            command.push_str(&self.args.join(" "));
        }
        command
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let options = Options::parse(manifest_dir)?;
    let tools = Tools::find_or_install(manifest_dir)?;
    let plan = Plan::new(options.quick);
    let work = tempfile::tempdir().context("cannot make a work dir")?;
    let dir = work.path();
    let started = Instant::now();
    let mut report = Report {
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        commit: commit(manifest_dir),
        command: options.command(),
        quick: options.quick,
        machine: Machine::read(),
        small: Vec::new(),
        large: Vec::new(),
        channels: Vec::new(),
        neighbour: None,
        goals: Vec::new(),
    };

    if options.wants("small") {
        report.small = sections::small(&tools, dir, &plan).await?;
    }
    if options.wants("large") {
        report.large = sections::large(&tools, dir, &plan).await?;
    }
    if options.wants("channels") {
        report.channels = sections::channels(&tools, dir, &plan).await?;
    }
    if options.wants("neighbour") {
        report.neighbour = Some(sections::neighbour(&tools, dir, &plan).await?);
    }
    report.machine.load_after = load_average();
    report.goals = goals::evaluate(&report);

    println!("{}", report.markdown());
    report.write_json(&options.json)?;
    println!("JSON: {}", options.json.display());
    if !options.quick && options.only.len() == SECTIONS.len() {
        let results = manifest_dir.join("bench/RESULTS.md");
        std::fs::write(&results, report.results_file())?;
        println!("results: {}", results.display());
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The commit measured, marked `+dirty` when tracked files changed.
fn commit(dir: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    if head.is_empty() {
        "unknown".to_owned()
    } else if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}

/// `/proc/loadavg`'s three load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

impl Machine {
    fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or("unknown CPU".to_owned(), |(_, model)| {
                model.trim().to_owned()
            });
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kib / f64::from(1 << 20),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
            load_before: load_average(),
            load_after: String::new(),
        }
    }
}
