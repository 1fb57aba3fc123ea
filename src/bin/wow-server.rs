//! `wow-server`: parse flags, load the configuration, set up logging, run
//! until SIGTERM, reloading on SIGHUP and when a configuration file changes.

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wow::config::args::ServerArgs;
use wow::config::{ConfigErrors, EnvVars, Loaded, ServerConfig, load, print};
use wow::daemon::LogHandle;
use wow::reload::{Controller, ServerReload, Watcher};
use wow::server::Server;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    let env = EnvVars::from_process();
    let loaded = match load::server(&args, &env) {
        Ok(loaded) => loaded,
        Err(errors) => return config_errors(&errors),
    };
    if args.common.print_config {
        let entries = print::server_entries(&loaded.config);
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(args, env, loaded, log))
}

/// Prints every configuration problem on its own line; exit code 2.
fn config_errors(errors: &ConfigErrors) -> ExitCode {
    for error in &errors.0 {
        eprintln!("error: {error}");
    }
    ExitCode::from(2)
}

async fn serve(
    args: ServerArgs,
    env: EnvVars,
    loaded: Loaded<ServerConfig>,
    log: LogHandle,
) -> ExitCode {
    let listen = loaded.config.listen;
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "error: cannot listen on {listen}: {error}; pick another address with --listen or --port"
            );
            return ExitCode::from(1);
        }
    };
    let result = async {
        // SIGHUP, SIGTERM and the file watcher all reach one control task,
        // which is also what tells the server to shut down.
        let (controls, receiver) = mpsc::unbounded_channel();
        wow::reload::signals(controls.clone())?;
        let server = Server::new(loaded.config.clone())?;
        let watcher = Watcher::new(&loaded.watch, controls);
        let reload = ServerReload::new(server.relay().clone(), args, env, loaded, Some(log));
        let mut controller = Controller::new(reload, receiver);
        match watcher {
            Ok(watcher) => controller = controller.with_watcher(watcher),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "cannot watch the configuration: reload with SIGHUP"
            ),
        }
        server.run(listener, controller.run()).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
