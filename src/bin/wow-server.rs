//! `wow-server`: parse flags, load the configuration, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use wow::config::args::ServerArgs;
use wow::server::Server;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    let config = match wow::config::load::server(&args) {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("error: {error}");
            }
            return ExitCode::from(2);
        }
    };
    if args.common.check_config {
        return ExitCode::SUCCESS;
    }
    let log_format =
        wow::daemon::resolve_log_format(config.log_format, args.common.log_format.is_some());
    if let Err(error) = wow::daemon::init_logging(config.log_level, log_format) {
        eprintln!("error: cannot set up logging: {error:#}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let listen = config.listen;
        let listener = match TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: cannot listen on {listen}: {error}; pick another address with --listen or --port");
                return ExitCode::from(1);
            }
        };
        let result = async {
            let shutdown = wow::daemon::shutdown_signal()?;
            Server::new(config)?.run(listener, shutdown).await
        };
        match result.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(1)
            }
        }
    })
}
