//! Hot reload (SPEC §2, STYLE §8). SIGHUP, SIGTERM/SIGINT and the file
//! watcher all send a [`Control`] on one channel to one task,
//! [`Controller::run`]; the watcher never applies anything itself.
//!
//! A reload reads every layer again and validates all of it; an invalid
//! configuration is rejected and the running one stays. Otherwise the old
//! and new configurations are compared key by key: keys that can change
//! live are applied ([`ServerReload`] swaps the relay's `ArcSwap`,
//! [`ClientReload`] hands the profiles to the running client), keys that
//! need a restart keep their running value and are named in the log. Each
//! reload logs one line: `reload applied`, `reload rejected` or `reload
//! unchanged`, between sd_notify's `RELOADING=1` and `READY=1`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::client::ConfigUpdates;
use crate::config::args::{ClientArgs, ServerArgs};
use crate::config::print::{Entry, client_entries, server_entries};
use crate::config::{ClientConfig, ConfigErrors, EnvVars, Loaded, ServerConfig, WatchSet, load};
use crate::daemon::{LogHandle, systemd};
use crate::server::Relay;

/// How long the watcher lets a burst of file events settle (an editor's
/// save is often several events) before it asks for one reload.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// Server keys (or sections) that only change on restart.
const SERVER_RESTART_KEYS: [&str; 8] = [
    "listen",
    "state_dir",
    "log_format",
    "limits.header_timeout",
    "limits.max_header_bytes",
    "limits.max_channels",
    "auth.jwt_secret",
    "cluster",
];

/// Client keys that only change on restart.
const CLIENT_RESTART_KEYS: [&str; 5] = [
    "state_dir",
    "log_format",
    "history_max",
    "history_body_max",
    "metrics_listen",
];

/// What the control task is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Read the configuration again and apply it.
    Reload(Trigger),
    /// Stop the daemon (drain and exit).
    Shutdown,
}

/// Why a reload was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (`systemctl reload`).
    Hangup,
    /// These watched files changed.
    Files(Vec<PathBuf>),
    /// The embedding program asked (tests, an admin API).
    Request,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Hangup => f.write_str("SIGHUP"),
            Trigger::Request => f.write_str("request"),
            Trigger::Files(paths) => {
                let paths: Vec<String> = paths
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect();
                write!(f, "change of {}", paths.join(", "))
            }
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration is in force.
    Applied {
        /// Keys now in force.
        changed: Vec<String>,
        /// Keys that changed but keep their running value until a restart.
        needs_restart: Vec<String>,
    },
    /// The new configuration is invalid; the running one stays.
    Rejected(ConfigErrors),
    /// Nothing changed.
    Unchanged,
}

impl Outcome {
    fn new(changed: Vec<String>, needs_restart: Vec<String>) -> Self {
        if changed.is_empty() && needs_restart.is_empty() {
            Outcome::Unchanged
        } else {
            Outcome::Applied {
                changed,
                needs_restart,
            }
        }
    }

    /// Logs the outcome as the reload's one line.
    pub fn log(&self, trigger: &Trigger) {
        match self {
            Outcome::Applied {
                changed,
                needs_restart,
            } if needs_restart.is_empty() => {
                info!(%trigger, changed = %changed.join(", "), "reload applied");
            }
            Outcome::Applied {
                changed,
                needs_restart,
            } => info!(
                %trigger,
                changed = %changed.join(", "),
                needs_restart = %needs_restart.join(", "),
                "reload applied; restart to apply the keys in needs_restart"
            ),
            Outcome::Rejected(errors) => {
                warn!(%trigger, error = %errors, "reload rejected: the running configuration stays");
            }
            Outcome::Unchanged => info!(%trigger, "reload unchanged"),
        }
    }
}

/// A daemon whose configuration can be reloaded.
pub trait Reloadable {
    /// Reads every layer again, validates it and applies what changed.
    fn reload(&mut self) -> Outcome;

    /// The files and folders the configuration in force was read from.
    fn watch_set(&self) -> &WatchSet;
}

/// Turns SIGHUP into [`Control::Reload`] and SIGTERM/SIGINT into
/// [`Control::Shutdown`].
///
/// # Errors
///
/// When the signal handlers cannot be installed.
pub fn signals(controls: mpsc::UnboundedSender<Control>) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = hangup.recv() => Control::Reload(Trigger::Hangup),
                _ = terminate.recv() => Control::Shutdown,
                _ = interrupt.recv() => Control::Shutdown,
            };
            if controls.send(control).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Watches the folders of every configuration file (inotify) and asks for
/// a reload when a relevant file changes. Folders, not files, are watched:
/// an editor's atomic-rename save replaces the file a file watch would
/// follow, and a new drop-in file only shows in its folder.
///
/// Events are debounced here rather than with `notify-debouncer-mini`,
/// which drops the event kind: inotify reports every open and read of a
/// file, and the reload's own reads would otherwise trigger the next reload.
pub struct Watcher {
    watcher: RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
    relevant: Arc<Mutex<WatchSet>>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("watched", &self.watched)
            .finish()
    }
}

impl Watcher {
    /// Starts watching what `set` names. Must be called within a Tokio
    /// runtime (the debouncing task runs on it).
    ///
    /// # Errors
    ///
    /// When the platform's watcher cannot be created.
    pub fn new(set: &WatchSet, controls: mpsc::UnboundedSender<Control>) -> anyhow::Result<Self> {
        let relevant = Arc::new(Mutex::new(set.clone()));
        let filter = relevant.clone();
        let (changes, changed) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            match result {
                // Opening and reading a file changes nothing.
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                Ok(event) => {
                    for path in event.paths {
                        if filter.lock().map_or(true, |set| set.is_relevant(&path)) {
                            let _closed = changes.send(path);
                        }
                    }
                }
                Err(error) => warn!(error = %error, "configuration watcher failed"),
            }
        })?;
        tokio::spawn(debounce(changed, controls));
        let mut watcher = Watcher {
            watcher,
            watched: BTreeSet::new(),
            relevant,
        };
        watcher.update(set);
        Ok(watcher)
    }

    /// Watches what `set` names now: folders that appeared (a new drop-in
    /// folder) are added, folders no longer needed are dropped.
    pub fn update(&mut self, set: &WatchSet) {
        if let Ok(mut relevant) = self.relevant.lock() {
            *relevant = set.clone();
        }
        let wanted = set.directories();
        for gone in self.watched.difference(&wanted) {
            let _already_gone = self.watcher.unwatch(gone);
        }
        let mut watched = BTreeSet::new();
        for dir in wanted {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(error) => {
                    warn!(error = %error, dir = %dir.display(), "cannot watch a configuration folder");
                }
            }
        }
        self.watched = watched;
    }
}

/// Turns a burst of changed paths into one reload, [`DEBOUNCE`] after the
/// first; ends when the watcher is dropped.
async fn debounce(
    mut changed: mpsc::UnboundedReceiver<PathBuf>,
    controls: mpsc::UnboundedSender<Control>,
) {
    while let Some(first) = changed.recv().await {
        let mut paths = vec![first];
        let settled = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(settled);
        loop {
            tokio::select! {
                () = &mut settled => break,
                path = changed.recv() => match path {
                    Some(path) if !paths.contains(&path) => paths.push(path),
                    Some(_) => {}
                    None => return,
                },
            }
        }
        if controls
            .send(Control::Reload(Trigger::Files(paths)))
            .is_err()
        {
            return;
        }
    }
}

/// The task that receives every [`Control`] and runs reloads one at a time.
pub struct Controller<R> {
    target: R,
    controls: mpsc::UnboundedReceiver<Control>,
    watcher: Option<Watcher>,
    reports: Option<mpsc::UnboundedSender<Outcome>>,
}

impl<R: Reloadable> Controller<R> {
    /// A controller applying reloads to `target`, told what to do on `controls`.
    pub fn new(target: R, controls: mpsc::UnboundedReceiver<Control>) -> Self {
        Controller {
            target,
            controls,
            watcher: None,
            reports: None,
        }
    }

    /// Keeps `watcher` watching what the configuration in force was read from.
    pub fn with_watcher(mut self, watcher: Watcher) -> Self {
        self.watcher = Some(watcher);
        self
    }

    /// Also sends each outcome to `reports` (for tests and embedders).
    pub fn with_reports(mut self, reports: mpsc::UnboundedSender<Outcome>) -> Self {
        self.reports = Some(reports);
        self
    }

    /// Runs reloads until [`Control::Shutdown`] or until every sender is
    /// gone; resolving is the daemon's signal to shut down.
    pub async fn run(mut self) {
        while let Some(Control::Reload(trigger)) = self.controls.recv().await {
            systemd::reloading();
            let outcome = self.target.reload();
            outcome.log(&trigger);
            if let Some(watcher) = &mut self.watcher {
                watcher.update(self.target.watch_set());
            }
            systemd::ready();
            if let Some(reports) = &self.reports {
                let _closed = reports.send(outcome);
            }
        }
    }
}

/// Keys whose values differ between two configurations (or exist in one only).
pub fn changed_keys(old: &[Entry], new: &[Entry]) -> Vec<String> {
    let mut changed: Vec<String> = old
        .iter()
        .filter(|entry| !new.contains(entry))
        .chain(new.iter().filter(|entry| !old.contains(entry)))
        .map(|entry| entry.key.clone())
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

fn is_under(key: &str, roots: &[&str]) -> bool {
    roots.iter().any(|root| {
        key == *root
            || key
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Reloads a running `wow-server`.
pub struct ServerReload {
    relay: Arc<Relay>,
    args: ServerArgs,
    env: EnvVars,
    running: Loaded<ServerConfig>,
    log: Option<LogHandle>,
}

impl ServerReload {
    /// Reloads `relay`, reading the layers `args` and `env` name; `running`
    /// is what the relay was started with.
    pub fn new(
        relay: Arc<Relay>,
        args: ServerArgs,
        env: EnvVars,
        running: Loaded<ServerConfig>,
        log: Option<LogHandle>,
    ) -> Self {
        ServerReload {
            relay,
            args,
            env,
            running,
            log,
        }
    }
}

impl Reloadable for ServerReload {
    fn reload(&mut self) -> Outcome {
        let loaded = match load::server(&self.args, &self.env) {
            Ok(loaded) => loaded,
            Err(errors) => return Outcome::Rejected(errors),
        };
        let old = &self.running.config;
        let changed = changed_keys(&server_entries(old), &server_entries(&loaded.config));
        let (needs_restart, live): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|key| is_under(key, &SERVER_RESTART_KEYS));

        let mut config = loaded.config;
        config.listen = old.listen;
        config.state_dir = old.state_dir.clone();
        config.log_format = old.log_format;
        config.limits.header_timeout = old.limits.header_timeout;
        config.limits.max_header_bytes = old.limits.max_header_bytes;
        config.limits.max_channels = old.limits.max_channels;
        config.auth.jwt_secret = old.auth.jwt_secret.clone();
        config.cluster = old.cluster.clone();
        if live.iter().any(|key| key == "log_level") {
            set_log_level(self.log.as_ref(), config.log_level);
        }
        if !live.is_empty() {
            self.relay.set_config(config.clone());
        }
        self.running = Loaded {
            config,
            origins: loaded.origins,
            watch: loaded.watch,
        };
        Outcome::new(live, needs_restart)
    }

    fn watch_set(&self) -> &WatchSet {
        &self.running.watch
    }
}

/// Reloads a running `wow-client`.
pub struct ClientReload {
    updates: ConfigUpdates,
    args: ClientArgs,
    env: EnvVars,
    running: Loaded<ClientConfig>,
    log: Option<LogHandle>,
}

impl ClientReload {
    /// Reloads the client `updates` reaches, reading the layers `args` and
    /// `env` name (`--profile` keeps selecting); `running` is what the
    /// client was started with.
    pub fn new(
        updates: ConfigUpdates,
        args: ClientArgs,
        env: EnvVars,
        running: Loaded<ClientConfig>,
        log: Option<LogHandle>,
    ) -> Self {
        ClientReload {
            updates,
            args,
            env,
            running,
            log,
        }
    }
}

impl Reloadable for ClientReload {
    fn reload(&mut self) -> Outcome {
        let loaded = match load::client(&self.args, &self.env) {
            Ok(loaded) => loaded,
            Err(errors) => return Outcome::Rejected(errors),
        };
        let old = &self.running.config;
        let changed = changed_keys(&client_entries(old), &client_entries(&loaded.config));
        let (needs_restart, live): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|key| is_under(key, &CLIENT_RESTART_KEYS));
        let live = summarize_profiles(live, old, &loaded.config);

        let mut config = loaded.config;
        config.state_dir = old.state_dir.clone();
        config.log_format = old.log_format;
        config.history_max = old.history_max;
        config.history_body_max = old.history_body_max;
        config.metrics_listen = old.metrics_listen;
        if live.iter().any(|key| key == "log_level") {
            set_log_level(self.log.as_ref(), config.log_level);
        }
        if !live.is_empty() {
            self.updates.apply(config.clone());
        }
        self.running = Loaded {
            config,
            origins: loaded.origins,
            watch: loaded.watch,
        };
        Outcome::new(live, needs_restart)
    }

    fn watch_set(&self) -> &WatchSet {
        &self.running.watch
    }
}

/// Names an added or removed profile once instead of key by key.
fn summarize_profiles(changed: Vec<String>, old: &ClientConfig, new: &ClientConfig) -> Vec<String> {
    let has = |config: &ClientConfig, name: &str| config.profiles.iter().any(|p| p.name == name);
    let mut summary: Vec<String> = Vec::new();
    for key in changed {
        let Some(name) = key
            .strip_prefix("profiles.")
            .and_then(|rest| rest.split('.').next())
        else {
            summary.push(key);
            continue;
        };
        let line = match (has(old, name), has(new, name)) {
            (false, true) => format!("profiles.{name} (added)"),
            (true, false) => format!("profiles.{name} (removed)"),
            _ => key.clone(),
        };
        if !summary.contains(&line) {
            summary.push(line);
        }
    }
    summary
}

fn set_log_level(log: Option<&LogHandle>, level: crate::config::LogLevel) {
    if let Some(log) = log
        && let Err(error) = log.set_level(level)
    {
        warn!(error = format!("{error:#}"), "cannot change the log level");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_changed_keys_and_restart_only_ones() {
        let old = ServerConfig::default();
        let mut new = old.clone();
        new.limits.max_body = 1 << 20;
        new.listen = "127.0.0.1:9000".parse().unwrap();
        new.cluster.peers = vec!["a:7946".into()];
        let changed = changed_keys(&server_entries(&old), &server_entries(&new));
        assert_eq!(changed, ["cluster.peers", "limits.max_body", "listen"]);
        let (restart, live): (Vec<_>, Vec<_>) = changed
            .into_iter()
            .partition(|key| is_under(key, &SERVER_RESTART_KEYS));
        assert_eq!(live, ["limits.max_body"]);
        assert_eq!(restart, ["cluster.peers", "listen"]);
        assert!(!is_under("listening", &["listen"]));
    }

    #[test]
    fn profile_changes_are_summarized() {
        let profile = |name: &str, target: &str| crate::config::Profile {
            name: name.into(),
            server_url: "http://relay".into(),
            target: target.parse().unwrap(),
            token: crate::Secret::default(),
            insecure: false,
            timeout: None,
            offline: None,
        };
        let config = |profiles| ClientConfig {
            state_dir: "/s".into(),
            log_level: crate::config::LogLevel::Info,
            log_format: crate::config::LogFormat::Text,
            history_max: 10,
            history_body_max: 1 << 20,
            metrics_listen: None,
            profiles,
        };
        let old = config(vec![profile("a", "http://x"), profile("b", "http://x")]);
        let new = config(vec![profile("a", "http://y"), profile("c", "http://x")]);
        let changed = changed_keys(&client_entries(&old), &client_entries(&new));
        assert_eq!(
            summarize_profiles(changed, &old, &new),
            [
                "profiles.a.target",
                "profiles.b (removed)",
                "profiles.c (added)"
            ]
        );
    }
}
