//! The subcommands of `wow-client` other than running the tunnels.

use std::io::Write;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use wow::Secret;
use wow::client::{History, inspect, login, status_file};
use wow::config::args::{ClientArgs, ClientCommand};
use wow::config::{ClientConfig, EnvVars, load};

use crate::common::{config_errors, failed};

/// Runs one subcommand to its end.
pub fn run(
    command: &ClientCommand,
    args: &ClientArgs,
    env: &EnvVars,
    runtime: &Runtime,
) -> ExitCode {
    match command {
        ClientCommand::Echo { listen } => runtime.block_on(echo(listen)),
        ClientCommand::Status => status(args, env),
        ClientCommand::History {
            limit,
            json,
            show,
            raw,
        } => history(args, env, *limit, *json, show.as_deref(), *raw),
        ClientCommand::Replay { id, target } => {
            runtime.block_on(replay(args, env, id, target.as_deref()))
        }
        ClientCommand::Login => sign_in(args, env, runtime),
    }
}

/// `wow-client login`: signs in to the server of each selected profile.
fn sign_in(args: &ClientArgs, env: &EnvVars, runtime: &Runtime) -> ExitCode {
    let loaded = match load::client(args, env) {
        Ok(loaded) => loaded,
        Err(errors) => return config_errors(&errors),
    };
    let config = &loaded.config;
    if let Err(error) = wow::daemon::init_logging(config.log_level, config.log_format) {
        return failed(format!("cannot set up logging: {error:#}"));
    }
    let token = args.token.clone().filter(|token| !token.is_empty());
    let mut stdout = std::io::stdout();
    match runtime.block_on(login::run(config, token.map(Secret::new), &mut stdout)) {
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
        Err(error) => failed(format!("{error:#}")),
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
    let shown = History::open_existing(&state_dir).and_then(|history| match show {
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
        Err(error) => failed(format!("{error:#}")),
    }
}

/// `wow-client replay ID`: sends a kept delivery again and prints its line.
async fn replay(args: &ClientArgs, env: &EnvVars, id: &str, target: Option<&str>) -> ExitCode {
    let config = match load::client(args, env) {
        Ok(loaded) => loaded.config,
        // A replay goes to the recorded target (or --target): it needs the
        // state dir, not a server or a profile.
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
        Err(error) => failed(format!("{error:#}")),
    }
}

/// `wow-client echo`: a local app that describes every request it gets.
async fn echo(listen: &str) -> ExitCode {
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            return failed(format!(
                "cannot listen on {listen}: {error}; pick another address with --listen"
            ));
        }
    };
    let shutdown = match wow::daemon::shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => return failed(format!("cannot install signal handlers: {error}")),
    };
    eprintln!("echo app listening on http://{listen}");
    wow::client::echo::serve(listener, shutdown).await;
    ExitCode::SUCCESS
}
