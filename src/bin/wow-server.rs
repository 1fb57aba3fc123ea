//! `wow-server`: parse flags, load the configuration, set up logging, run
//! until SIGTERM, reloading on SIGHUP and when a configuration file changes.

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use wow::config::args::ServerArgs;
use wow::config::{EnvVars, Loaded, ServerConfig, load, print};
use wow::daemon::LogHandle;
use wow::reload::ServerReload;
use wow::server::Server;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    let env = EnvVars::from_process();
    let loaded = match load::server(&args, &env) {
        Ok(loaded) => loaded,
        Err(errors) => return common::config_errors(&errors),
    };
    let logging = (loaded.config.log_level, loaded.config.log_format);
    let log = match common::prepare(&args.common, &loaded, print::server_entries, logging) {
        Ok(log) => log,
        Err(exit) => return exit,
    };
    match common::runtime() {
        Ok(runtime) => runtime.block_on(serve(args, env, loaded, log)),
        Err(exit) => exit,
    }
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
            return common::failed(format!(
                "cannot listen on {listen}: {error}; pick another address with --listen or --port"
            ));
        }
    };
    let result = async {
        let server = Server::new(loaded.config.clone())?;
        let watch = loaded.watch.clone();
        let reload = ServerReload::new(server.relay().clone(), args, env, loaded, Some(log));
        let controller = common::controller(&watch, reload)?;
        server.run(listener, controller.run()).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => common::failed(format!("{error:#}")),
    }
}
