//! What both binaries do before they run: report configuration problems,
//! answer `--print-config` and `--check-config`, set up logging, and wire
//! SIGHUP, SIGTERM and the file watcher to one control task.

use std::process::ExitCode;

use tokio::sync::mpsc;
use wow::config::args::CommonArgs;
use wow::config::print::{self, Entry};
use wow::config::{ConfigErrors, Loaded, WatchSet};
use wow::daemon::LogHandle;
use wow::reload::{Control, Controller, Reloadable, Watcher};

/// Prints every configuration problem on its own line; exit code 2.
pub fn config_errors(errors: &ConfigErrors) -> ExitCode {
    for error in &errors.0 {
        eprintln!("error: {error}");
    }
    ExitCode::from(2)
}

/// Prints a failure that is not the user's configuration; exit code 1.
pub fn failed(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(1)
}

/// The runtime both daemons run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new()
        .map_err(|error| failed(format!("cannot start the runtime: {error}")))
}

/// Answers `--print-config` and `--check-config` (returning the exit code),
/// or sets up logging and returns its handle for the daemon to run.
pub fn prepare<C>(
    common: &CommonArgs,
    loaded: &Loaded<C>,
    entries: fn(&C) -> Vec<Entry>,
    logging: (wow::config::LogLevel, wow::config::LogFormat),
) -> Result<LogHandle, ExitCode> {
    if common.print_config {
        print!(
            "{}",
            print::render(&entries(&loaded.config), &loaded.origins)
        );
        return Err(ExitCode::SUCCESS);
    }
    if common.check_config {
        eprintln!("configuration is valid");
        return Err(ExitCode::SUCCESS);
    }
    let (level, format) = logging;
    let format = wow::daemon::resolve_log_format(format, loaded.origins.is_set("log_format"));
    wow::daemon::init_logging(level, format)
        .map_err(|error| failed(format!("cannot set up logging: {error:#}")))
}

/// Routes SIGHUP, SIGTERM and changes to the configuration files to one
/// control task running `reload`; its `run()` is the daemon's shutdown
/// future.
///
/// # Errors
///
/// When the signal handlers cannot be installed.
pub fn controller<R: Reloadable>(watch: &WatchSet, reload: R) -> anyhow::Result<Controller<R>> {
    let (controls, receiver) = mpsc::unbounded_channel::<Control>();
    wow::reload::signals(controls.clone())?;
    let watcher = Watcher::new(watch, controls);
    let controller = Controller::new(reload, receiver);
    Ok(match watcher {
        Ok(watcher) => controller.with_watcher(watcher),
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot watch the configuration: reload with SIGHUP"
            );
            controller
        }
    })
}
