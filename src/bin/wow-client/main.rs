//! `wow-client`: parse flags, load the configuration, set up logging, run
//! every profile, reloading on SIGHUP and when a configuration file changes.
//! The other subcommands (`echo`, `status`, `history`, `replay`, `login`)
//! are in `commands.rs`.

mod commands;
#[path = "../common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::mpsc;
use wow::client::{Client, StateDir};
use wow::config::args::ClientArgs;
use wow::config::{ClientConfig, EnvVars, Loaded, load, print};
use wow::daemon::LogHandle;
use wow::reload::ClientReload;

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    let env = EnvVars::from_process();
    let runtime = match common::runtime() {
        Ok(runtime) => runtime,
        Err(exit) => return exit,
    };
    if let Some(command) = &args.command {
        return commands::run(command, &args, &env, &runtime);
    }

    let loaded = match load::client(&args, &env) {
        Ok(loaded) => loaded,
        Err(errors) => return common::config_errors(&errors),
    };
    let logging = (loaded.config.log_level, loaded.config.log_format);
    let log = match common::prepare(&args.common, &loaded, print::client_entries, logging) {
        Ok(log) => log,
        Err(exit) => return exit,
    };
    if args.reset_channel {
        let state = StateDir::new(&loaded.config.state_dir);
        for profile in &loaded.config.profiles {
            if let Err(error) = state.forget_channel(&profile.name, &profile.server_url) {
                return common::failed(format!("{error:#}"));
            }
        }
    }
    runtime.block_on(run(args, env, loaded, log))
}

async fn run(
    args: ClientArgs,
    env: EnvVars,
    loaded: Loaded<ClientConfig>,
    log: LogHandle,
) -> ExitCode {
    // The user's lines go to stdout whatever the log level; logs to stderr.
    let (events, mut printed) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut lines = String::new();
        while let Some(event) = printed.recv().await {
            // Lines queued meanwhile go out in the same write.
            let _ = writeln!(lines, "{event}");
            while lines.len() < 64 * 1024
                && let Ok(event) = printed.try_recv()
            {
                let _ = writeln!(lines, "{event}");
            }
            let mut stdout = std::io::stdout().lock();
            // stdout closed (a pipe reader went away): keep serving.
            let _ = stdout
                .write_all(lines.as_bytes())
                .and_then(|()| stdout.flush());
            lines.clear();
        }
    });
    let client = Client::new(loaded.config.clone(), events);
    let watch = loaded.watch.clone();
    let reload = ClientReload::new(client.updates(), args, env, loaded, Some(log));
    let controller = match common::controller(&watch, reload) {
        Ok(controller) => controller,
        Err(error) => return common::failed(format!("cannot install signal handlers: {error:#}")),
    };
    let result = client.run(controller.run()).await;
    let _ = printer.await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
