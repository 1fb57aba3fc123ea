//! The layers of SPEC §2 (files, drop-ins, the user file, the environment,
//! flags): found, checked key by key on their own so that every problem
//! names its file and key, then merged by the `config` crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, ConfigError, FileFormat, ValueKind};
use serde::de::DeserializeOwned;

use super::ConfigErrors;
use super::args::CommonArgs;

/// The system config folder when neither `--config-dir` nor `WOW_CONFIG_DIR` say otherwise.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/wow";

/// The environment variable that moves the system config folder; not a key.
pub const CONFIG_DIR_VARIABLE: &str = "WOW_CONFIG_DIR";

/// Which daemon a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `wow-server`: `server.toml`, `server.d/`.
    Server,
    /// `wow-client`: `client.toml`, `client.d/`, the user's file.
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built in.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable, by name.
    Environment(String),
    /// A command-line flag, by name without dashes.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Environment(name) => write!(f, "environment {name}"),
            Origin::Flag(name) => write!(f, "flag --{name}"),
        }
    }
}

/// Which layer set each key, by dotted path (`limits.max_body`). Keys no
/// layer set come from the built-in defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(BTreeMap<String, (usize, Origin)>);

impl Origins {
    /// Where `key` came from.
    pub fn get(&self, key: &str) -> Origin {
        self.0
            .get(key)
            .map_or(Origin::Default, |(_, origin)| origin.clone())
    }

    /// Whether some layer set `key`.
    pub fn is_set(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// How late the layer that set `key` came (higher wins).
    pub(crate) fn rank(&self, key: &str) -> Option<usize> {
        self.0.get(key).map(|(rank, _)| *rank)
    }

    /// Records that the layer `rank` set `key`; later layers win.
    pub(crate) fn record(&mut self, key: &str, rank: usize, origin: Origin) {
        match self.0.get(key) {
            Some((known, _)) if *known > rank => {}
            _ => {
                self.0.insert(key.to_owned(), (rank, origin));
            }
        }
    }

    /// Makes `key` report where `from` came from (a derived value).
    pub(crate) fn alias(&mut self, key: &str, from: &str) {
        if let Some(entry) = self.0.get(from).cloned() {
            self.0.insert(key.to_owned(), entry);
        }
    }

    /// Where the first key under `prefix` (`profiles.stripe`) came from.
    pub(crate) fn under(&self, prefix: &str) -> Option<Origin> {
        let nested = format!("{prefix}.");
        self.0
            .iter()
            .find(|(key, _)| *key == prefix || key.starts_with(&nested))
            .map(|(_, (_, origin))| origin.clone())
    }
}

/// A snapshot of environment variables; loading reads only this, so tests
/// can pass their own instead of changing the process's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvVars(BTreeMap<String, String>);

impl EnvVars {
    /// The variables of this process (those that are valid Unicode).
    pub fn from_process() -> Self {
        EnvVars(
            std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()?))
                })
                .collect(),
        )
    }

    /// A variable's value, when set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// The `WOW_*` variables that are configuration keys.
    fn keys(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|(name, value)| {
                name.starts_with("WOW_") && *name != CONFIG_DIR_VARIABLE && !value.is_empty()
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EnvVars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        EnvVars(
            pairs
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        )
    }
}

/// The files a daemon reads and the folders whose new `*.toml` files it
/// reads too; what the reload watcher watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSet {
    /// Files read, or read once they exist (secret files included).
    pub files: BTreeSet<PathBuf>,
    /// Drop-in folders: any `*.toml` in them counts.
    pub dropin_dirs: BTreeSet<PathBuf>,
}

impl WatchSet {
    /// Adds a file to watch, made absolute so that it matches the paths
    /// the watcher reports.
    pub fn add_file(&mut self, path: impl AsRef<Path>) {
        self.files.insert(absolute(path.as_ref()));
    }

    /// Adds a drop-in folder to watch.
    pub fn add_dropin_dir(&mut self, path: impl AsRef<Path>) {
        self.dropin_dirs.insert(absolute(path.as_ref()));
    }

    /// The existing folders to watch: watching folders, not files, is what
    /// makes atomic-rename saves and new drop-in files visible.
    pub fn directories(&self) -> BTreeSet<PathBuf> {
        let parents = self
            .files
            .iter()
            .chain(&self.dropin_dirs)
            .filter_map(|path| path.parent());
        parents
            .map(Path::to_path_buf)
            .chain(self.dropin_dirs.iter().cloned())
            .filter(|dir| dir.is_dir())
            .collect()
    }

    /// Whether a change of `path` can change the configuration.
    pub fn is_relevant(&self, path: &Path) -> bool {
        self.files.contains(path)
            || self.dropin_dirs.contains(path)
            || path
                .parent()
                .is_some_and(|dir| self.dropin_dirs.contains(dir))
                && path.extension().is_some_and(|ext| ext == "toml")
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A value set by a flag, for the layer above the environment.
#[derive(Debug, Clone)]
pub(crate) struct FlagValue {
    /// The flag's name without dashes (`max-body`).
    pub flag: &'static str,
    /// The key it sets (`limits.max_body`).
    pub key: &'static str,
    /// The value as given.
    pub value: config::Value,
}

/// One layer and what it holds.
enum Source {
    File {
        path: PathBuf,
        text: String,
        table: toml::Table,
    },
    Environment(BTreeMap<String, String>),
    Flags(Vec<FlagValue>),
}

/// All layers merged, each key's origin, and what to watch.
pub(crate) struct Gathered<R> {
    pub raw: R,
    pub origins: Origins,
    pub watch: WatchSet,
    /// The rank of the flags layer, for values flags derive.
    pub flag_rank: usize,
    /// Problems of single keys (those keys were left out of `raw`); the
    /// caller adds the problems of the whole and reports them together.
    pub problems: Vec<String>,
}

/// Reads every layer, checks each key of each on its own, and merges them.
/// Unreadable files, syntax errors, unknown keys and bad values, each
/// naming its file (or variable, or flag) and key, are in
/// [`Gathered::problems`].
///
/// # Errors
///
/// When even the valid keys cannot be merged.
pub(crate) fn gather<R: DeserializeOwned>(
    role: Role,
    common: &CommonArgs,
    env: &EnvVars,
    flags: Vec<FlagValue>,
) -> Result<Gathered<R>, ConfigErrors> {
    let mut problems = Vec::new();
    let (paths, watch) = file_paths(role, common, env, &mut problems);
    let mut sources: Vec<Source> = paths
        .into_iter()
        .filter_map(|path| read_file(path, &mut problems))
        .collect();
    sources.push(Source::Environment(env.keys()));
    sources.push(Source::Flags(flags));

    let mut origins = Origins::default();
    let mut valid = Vec::new();
    for (rank, source) in sources.iter().enumerate() {
        for (key, value, origin) in leaves(source, &mut problems) {
            origins.record(&key, rank, origin.clone());
            let Some(value) = value else { continue };
            match check_leaf::<R>(&key, value.clone()) {
                Ok(()) => valid.push((key, value)),
                Err(error) => problems.push(format!("{origin}: {key}: {error}")),
            }
        }
    }
    let merged = if problems.is_empty() {
        merge(&sources)
    } else {
        // Merge what is valid anyway, so that problems of the whole (a
        // missing required key) are reported in the same run.
        merge_leaves(valid)
    };
    let raw = merged.map_err(|error| ConfigErrors(vec![error]))?;
    Ok(Gathered {
        raw,
        origins,
        watch,
        flag_rank: sources.len() - 1,
        problems,
    })
}

/// The merge of single keys, later ones replacing earlier ones.
fn merge_leaves<R: DeserializeOwned>(leaves: Vec<(String, config::Value)>) -> Result<R, String> {
    let mut builder = Config::builder();
    for (key, value) in leaves {
        builder = builder.set_override(key, value).map_err(describe)?;
    }
    builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|error| format!("cannot merge the configuration: {}", describe(error)))
}

/// The files to read, lowest layer first, and what to watch.
fn file_paths(
    role: Role,
    common: &CommonArgs,
    env: &EnvVars,
    problems: &mut Vec<String>,
) -> (Vec<PathBuf>, WatchSet) {
    let mut watch = WatchSet::default();
    if !common.config.is_empty() {
        for path in &common.config {
            watch.add_file(path);
        }
        return (common.config.clone(), watch);
    }

    let dir = config_dir(common, env);
    let main = dir.join(format!("{}.toml", role.name()));
    let dropins = dir.join(format!("{}.d", role.name()));
    let mut paths = vec![main.clone()];
    watch.add_file(&main);
    paths.extend(dropin_files(&dropins, problems));
    watch.add_dropin_dir(&dropins);
    if role == Role::Client
        && let Some(user) = user_file(env)
    {
        watch.add_file(&user);
        paths.push(user);
    }
    // Layers 2–4 are optional: only files that exist are read.
    let paths = paths.into_iter().filter(|path| path.exists()).collect();
    (paths, watch)
}

/// `--config-dir`, else `WOW_CONFIG_DIR`, else `/etc/wow`.
pub fn config_dir(common: &CommonArgs, env: &EnvVars) -> PathBuf {
    common
        .config_dir
        .clone()
        .or_else(|| env.get(CONFIG_DIR_VARIABLE).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))
}

/// `$XDG_CONFIG_HOME/wow/client.toml`, else `~/.config/wow/client.toml`.
fn user_file(env: &EnvVars) -> Option<PathBuf> {
    let base = env
        .get("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|home| Path::new(home).join(".config")))?;
    Some(base.join("wow/client.toml"))
}

/// The `*.toml` files of a drop-in folder, in name order.
fn dropin_files(dir: &Path, problems: &mut Vec<String>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            problems.push(format!(
                "{}: cannot list the folder: {error}",
                dir.display()
            ));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    files.sort();
    files
}

fn read_file(path: PathBuf, problems: &mut Vec<String>) -> Option<Source> {
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            problems.push(format!(
                "{}: cannot read the file: {error}; check the path and its permissions",
                path.display()
            ));
            return None;
        }
    };
    match text.parse::<toml::Table>() {
        Ok(table) => Some(Source::File { path, text, table }),
        Err(error) => {
            let at = error
                .span()
                .map(|span| line_and_column(&text, span.start))
                .unwrap_or_default();
            let message = error.message().trim_end_matches('\n').replace('\n', " ");
            problems.push(format!("{}: {at}invalid TOML: {message}", path.display()));
            None
        }
    }
}

fn line_and_column(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    format!("line {line}, column {column}: ")
}

/// Every key a layer sets, with its value (`None` for a table, which only
/// records that the table was written) and its origin.
fn leaves(
    source: &Source,
    problems: &mut Vec<String>,
) -> Vec<(String, Option<config::Value>, Origin)> {
    let mut found = Vec::new();
    match source {
        Source::File { path, table, .. } => {
            let origin = Origin::File(path.clone());
            table_leaves("", table, &origin, &mut found, problems);
        }
        Source::Environment(vars) => {
            for (name, value) in vars {
                let key = name["WOW_".len()..].to_lowercase().replace("__", ".");
                let origin = Origin::Environment(name.clone());
                if key.split('.').all(is_key_name) {
                    found.push((key, Some(config::Value::from(value.as_str())), origin));
                } else {
                    problems.push(format!(
                        "{origin}: not a configuration key: write keys as WOW_SECTION__KEY"
                    ));
                }
            }
        }
        Source::Flags(flags) => {
            for flag in flags {
                let origin = Origin::Flag(flag.flag.to_owned());
                found.push((flag.key.to_owned(), Some(flag.value.clone()), origin));
            }
        }
    }
    found
}

fn table_leaves(
    prefix: &str,
    table: &toml::Table,
    origin: &Origin,
    found: &mut Vec<(String, Option<config::Value>, Origin)>,
    problems: &mut Vec<String>,
) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if !is_key_name(name) {
            problems.push(format!(
                "{origin}: {key}: invalid key name: use letters, digits, \"-\" and \"_\""
            ));
            continue;
        }
        match value {
            toml::Value::Table(nested) => {
                found.push((key.clone(), None, origin.clone()));
                table_leaves(&key, nested, origin, found, problems);
            }
            leaf => found.push((key, Some(config_value(leaf)), origin.clone())),
        }
    }
}

fn is_key_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn config_value(value: &toml::Value) -> config::Value {
    let kind = match value {
        toml::Value::String(text) => ValueKind::String(text.clone()),
        toml::Value::Integer(number) => ValueKind::I64(*number),
        toml::Value::Float(number) => ValueKind::Float(*number),
        toml::Value::Boolean(flag) => ValueKind::Boolean(*flag),
        toml::Value::Datetime(at) => ValueKind::String(at.to_string()),
        toml::Value::Array(items) => ValueKind::Array(items.iter().map(config_value).collect()),
        toml::Value::Table(table) => ValueKind::Table(
            table
                .iter()
                .map(|(name, value)| (name.clone(), config_value(value)))
                .collect(),
        ),
    };
    config::Value::new(None, kind)
}

/// Checks one key on its own against the raw type: unknown keys, wrong
/// types and bad values all fail here, so each is reported with its key.
fn check_leaf<R: DeserializeOwned>(key: &str, value: config::Value) -> Result<(), String> {
    Config::builder()
        .set_override(key, value)
        .and_then(|builder| builder.build())
        .and_then(Config::try_deserialize::<R>)
        .map(drop)
        .map_err(describe)
}

/// The merge of every layer, later ones overriding single keys.
fn merge<R: DeserializeOwned>(sources: &[Source]) -> Result<R, String> {
    let mut builder = Config::builder();
    for source in sources {
        match source {
            Source::File { text, .. } => {
                builder = builder.add_source(config::File::from_str(text, FileFormat::Toml));
            }
            Source::Environment(vars) => {
                // Without `prefix_separator` the prefix would silently become
                // `WOW__` and `WOW_TIMEOUT` would be ignored.
                let environment = config::Environment::with_prefix("WOW")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(false)
                    .ignore_empty(true)
                    .source(Some(vars.clone().into_iter().collect()));
                builder = builder.add_source(environment);
            }
            Source::Flags(flags) => {
                for flag in flags {
                    builder = builder
                        .set_override(flag.key, flag.value.clone())
                        .map_err(|error| format!("flag --{}: {}", flag.flag, describe(error)))?;
                }
            }
        }
    }
    builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|error| format!("cannot merge the configuration: {}", describe(error)))
}

/// A `config` error as one phrase, without the key it already names.
fn describe(error: ConfigError) -> String {
    match error {
        ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        ConfigError::At { error, .. } => describe(*error),
        ConfigError::Message(message) => match message.strip_prefix("unknown field ") {
            Some(rest) => {
                let known = rest
                    .split_once(", expected ")
                    .map(|(_, known)| known.replace('`', ""))
                    .unwrap_or_default();
                format!("unknown key: remove it or fix its spelling (expected {known})")
            }
            None => message,
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_paths_cover_files_and_new_dropins() {
        let mut watch = WatchSet::default();
        watch.files.insert(PathBuf::from("/etc/wow/server.toml"));
        watch.dropin_dirs.insert(PathBuf::from("/etc/wow/server.d"));
        assert!(watch.is_relevant(Path::new("/etc/wow/server.toml")));
        assert!(watch.is_relevant(Path::new("/etc/wow/server.d/10-limits.toml")));
        assert!(watch.is_relevant(Path::new("/etc/wow/server.d")));
        assert!(!watch.is_relevant(Path::new("/etc/wow/client.toml")));
        assert!(!watch.is_relevant(Path::new("/etc/wow/server.d/.10-limits.toml.swp")));
    }

    #[test]
    fn later_layers_win_origins() {
        let mut origins = Origins::default();
        origins.record("timeout", 2, Origin::Environment("WOW_TIMEOUT".into()));
        origins.record("timeout", 1, Origin::File("/a.toml".into()));
        assert_eq!(
            origins.get("timeout").to_string(),
            "environment WOW_TIMEOUT"
        );
        assert_eq!(origins.get("listen"), Origin::Default);
        assert_eq!(line_and_column("a\nbc", 3), "line 2, column 2: ");
    }
}
