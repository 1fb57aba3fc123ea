//! `wow-client`: parse flags, load the configuration, set up logging, run
//! every profile, reloading on SIGHUP and when a configuration file changes.

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wow::client::{Client, StateDir, status_file};
use wow::client::{History, inspect};
use wow::config::args::{ClientArgs, ClientCommand};
use wow::config::{ClientConfig, ConfigErrors, EnvVars, Loaded, load, print};
use wow::daemon::LogHandle;
use wow::reload::{ClientReload, Controller, Watcher};

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    let env = EnvVars::from_process();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match &args.command {
        Some(ClientCommand::Echo { listen }) => return runtime.block_on(echo(listen)),
        Some(ClientCommand::Status) => return status(&args, &env),
        Some(ClientCommand::History {
            limit,
            json,
            show,
            raw,
        }) => return history(&args, &env, *limit, *json, show.as_deref(), *raw),
        Some(ClientCommand::Replay { id, target }) => {
            return runtime.block_on(replay(&args, &env, id, target.as_deref()));
        }
        None => {}
    }

    let loaded = match load::client(&args, &env) {
        Ok(loaded) => loaded,
        Err(errors) => return config_errors(&errors),
    };
    if args.common.print_config {
        let entries = print::client_entries(&loaded.config);
        print!("{}", print::render(&entries, &loaded.origins));
        return ExitCode::SUCCESS;
    }
    if args.common.check_config {
        eprintln!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let log_format = wow::daemon::resolve_log_format(
        loaded.config.log_format,
        loaded.origins.is_set("log_format"),
    );
    let log = match wow::daemon::init_logging(loaded.config.log_level, log_format) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("error: cannot set up logging: {error:#}");
            return ExitCode::from(1);
        }
    };
    if args.reset_channel {
        let state = StateDir::new(&loaded.config.state_dir);
        for profile in &loaded.config.profiles {
            if let Err(error) = state.forget_channel(&profile.name, &profile.server_url) {
                eprintln!("error: {error:#}");
                return ExitCode::from(1);
            }
        }
    }
    runtime.block_on(run(args, env, loaded, log))
}

/// Prints every configuration problem on its own line; exit code 2.
fn config_errors(errors: &ConfigErrors) -> ExitCode {
    for error in &errors.0 {
        eprintln!("error: {error}");
    }
    ExitCode::from(2)
}

async fn run(
    args: ClientArgs,
    env: EnvVars,
    loaded: Loaded<ClientConfig>,
    log: LogHandle,
) -> ExitCode {
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
    // SIGHUP, SIGTERM and the file watcher all reach one control task,
    // which is also what tells the client to stop.
    let (controls, receiver) = mpsc::unbounded_channel();
    if let Err(error) = wow::reload::signals(controls.clone()) {
        eprintln!("error: cannot install signal handlers: {error}");
        return ExitCode::from(1);
    }
    let client = Client::new(loaded.config.clone(), events);
    let watcher = Watcher::new(&loaded.watch, controls);
    let reload = ClientReload::new(client.updates(), args, env, loaded, Some(log));
    let mut controller = Controller::new(reload, receiver);
    match watcher {
        Ok(watcher) => controller = controller.with_watcher(watcher),
        Err(error) => tracing::warn!(
            error = format!("{error:#}"),
            "cannot watch the configuration: reload with SIGHUP"
        ),
    }
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

/// `wow-client status`: the profiles of the client running on this state dir.
fn status(args: &ClientArgs, env: &EnvVars) -> ExitCode {
    let state_dir = match load::client_state_dir(args, env) {
        Ok(dir) => dir,
        Err(errors) => return config_errors(&errors),
    };
    match status_file::read_status(&state_dir) {
        Ok(status) => {
            print!("{}", status_file::render_status(&status));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::from(1)
        }
    }
}

/// `wow-client history`: the deliveries this state dir kept.
fn history(
    args: &ClientArgs,
    env: &EnvVars,
    limit: usize,
    json: bool,
    show: Option<&str>,
    raw: bool,
) -> ExitCode {
    let state_dir = match load::client_state_dir(args, env) {
        Ok(dir) => dir,
        Err(errors) => return config_errors(&errors),
    };
    let mut out = std::io::stdout().lock();
    let shown = History::open(&state_dir).and_then(|history| match show {
        Some(id) => {
            let entry = history.find(id)?;
            if raw {
                out.write_all(&entry.request_body.bytes)?;
                Ok(())
            } else {
                inspect::write_entry(&mut out, &entry)
            }
        }
        None => {
            let profile = args.profiles.first().map(String::as_str);
            inspect::write_list(&mut out, &history, profile, limit, json)
        }
    });
    match shown.and_then(|()| out.flush().map_err(Into::into)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// `wow-client replay ID`: sends a kept delivery again and prints its line.
async fn replay(args: &ClientArgs, env: &EnvVars, id: &str, target: Option<&str>) -> ExitCode {
    let config = match load::client(args, env) {
        Ok(loaded) => loaded.config,
        Err(errors) if target.is_none() => return config_errors(&errors),
        Err(_) => match load::client_state_dir(args, env) {
            Ok(state_dir) => ClientConfig {
                state_dir,
                ..ClientConfig::default()
            },
            Err(errors) => return config_errors(&errors),
        },
    };
    match inspect::replay(&config, id, target).await {
        Ok(replayed) => {
            println!("{}", inspect::line(&replayed));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn echo(listen: &str) -> ExitCode {
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "error: cannot listen on {listen}: {error}; pick another address with --listen"
            );
            return ExitCode::from(1);
        }
    };
    let shutdown = match wow::daemon::shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("error: cannot install signal handlers: {error}");
            return ExitCode::from(1);
        }
    };
    eprintln!("echo app listening on http://{listen}");
    wow::client::echo::serve(listener, shutdown).await;
    ExitCode::SUCCESS
}
