//! `wow-client`: parse flags, load the configuration, set up logging, run.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wow::client::{Client, StateDir};
use wow::config::args::{ClientArgs, ClientCommand};

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    if let Some(ClientCommand::Echo { listen }) = &args.command {
        return runtime.block_on(echo(listen));
    }

    let config = match wow::config::load::client(&args) {
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
    if args.reset_channel {
        let state = StateDir::new(&config.state_dir);
        for profile in &config.profiles {
            if let Err(error) = state.forget_channel(&profile.name, &profile.server_url) {
                eprintln!("error: {error:#}");
                return ExitCode::from(1);
            }
        }
    }

    runtime.block_on(async move {
        let (events, mut printed) = mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(event) = printed.recv().await {
                let mut stdout = std::io::stdout().lock();
                // stdout closed (a pipe reader went away): keep serving.
                let _ = writeln!(stdout, "{event}").and_then(|()| stdout.flush());
            }
        });
        let shutdown = match wow::daemon::shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(error) => {
                eprintln!("error: cannot install signal handlers: {error}");
                return ExitCode::from(1);
            }
        };
        let result = Client::new(config, events).run(shutdown).await;
        let _ = printer.await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(error.exit_code())
            }
        }
    })
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
