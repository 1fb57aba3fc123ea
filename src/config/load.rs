//! `config::load`: builds the validated configuration from every layer of
//! SPEC §2 (defaults, files, drop-ins, the user file, `WOW_*`, flags).
//!
//! Each layer is checked key by key on its own, so every problem names its
//! file (or variable, or flag) and key; then the merge is validated as a
//! whole (required keys, keys that need each other), and the raw, all-optional
//! form becomes [`ServerConfig`] or [`ClientConfig`] with nothing left unset.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::args::{ClientArgs, CommonArgs, ServerArgs};
use super::layers::{self, FlagValue, Gathered, Role};
use super::raw::{RawClient, RawProfile, RawServer, Text};
use super::{
    Auth, Channels, ClientConfig, Cluster, DEFAULT_PROFILE, Limits, LogFormat, LogLevel, Profile,
    ServerConfig,
};
use crate::Secret;
use crate::client::Target;

pub use super::layers::{EnvVars, Origin, Origins, WatchSet, config_dir};

/// Every problem found in a configuration, each naming where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigErrors(pub Vec<String>);

/// A validated configuration, where each of its values came from, and the
/// files and folders a reload watches.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// The configuration itself.
    pub config: T,
    /// The layer that set each key.
    pub origins: Origins,
    /// What the reload watcher watches.
    pub watch: WatchSet,
}

/// The target of the unnamed profile when `--target-url` is not given.
const DEFAULT_TARGET: &str = "http://localhost:3000";

/// The server configuration from every layer.
///
/// # Errors
///
/// Every problem of every layer, each naming its file and key.
pub fn server(args: &ServerArgs, env: &EnvVars) -> Result<Loaded<ServerConfig>, ConfigErrors> {
    let mut problems = Vec::new();
    let port = args.port.as_deref().and_then(|port| {
        port.trim()
            .parse::<u16>()
            .map_err(|_| {
                problems.push(format!(
                    "flag --port: listen: invalid port {port:?}: give a number from 0 to 65535"
                ))
            })
            .ok()
    });
    let mut gathered =
        layers::gather::<RawServer>(Role::Server, &args.common, env, server_flags(args))?;
    problems.append(&mut gathered.problems);
    gathered.problems = problems;
    let port = port.filter(|_| args.listen.is_none());
    validate_server(gathered, port)
}

/// The client configuration from every layer, with the profiles to run.
///
/// # Errors
///
/// Every problem of every layer, each naming its file and key; an unknown
/// `--profile`.
pub fn client(args: &ClientArgs, env: &EnvVars) -> Result<Loaded<ClientConfig>, ConfigErrors> {
    let gathered =
        layers::gather::<RawClient>(Role::Client, &args.common, env, client_flags(args))?;
    validate_client(gathered, &args.profiles, env)
}

/// Only the client's state dir, for subcommands that need no profile.
///
/// # Errors
///
/// Every problem of every layer.
pub fn client_state_dir(args: &ClientArgs, env: &EnvVars) -> Result<PathBuf, ConfigErrors> {
    let gathered =
        layers::gather::<RawClient>(Role::Client, &args.common, env, client_flags(args))?;
    if !gathered.problems.is_empty() {
        return Err(ConfigErrors(gathered.problems));
    }
    Ok(gathered
        .raw
        .state_dir
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| default_client_state_dir(env), PathBuf::from))
}

fn flag(flags: &mut Vec<FlagValue>, flag: &'static str, key: &'static str, value: &Option<String>) {
    if let Some(value) = value {
        flags.push(FlagValue {
            flag,
            key,
            value: config::Value::from(value.as_str()),
        });
    }
}

fn common_flags(common: &CommonArgs) -> Vec<FlagValue> {
    let mut flags = Vec::new();
    flag(&mut flags, "state-dir", "state_dir", &common.state_dir);
    flag(&mut flags, "log-level", "log_level", &common.log_level);
    flag(&mut flags, "log-format", "log_format", &common.log_format);
    flags
}

fn server_flags(args: &ServerArgs) -> Vec<FlagValue> {
    let mut flags = common_flags(&args.common);
    for (name, key, value) in [
        ("listen", "listen", &args.listen),
        ("public-url", "public_url", &args.public_url),
        ("max-body", "limits.max_body", &args.max_body),
        (
            "cleanup-duration",
            "channels.cleanup_interval",
            &args.cleanup_duration,
        ),
        ("peer-domain", "cluster.peer_domain", &args.peer_domain),
        (
            "memberlist-port",
            "cluster.memberlist_port",
            &args.memberlist_port,
        ),
        (
            "memberlist-sync-duration",
            "cluster.sync_interval",
            &args.memberlist_sync_duration,
        ),
        (
            "github-client-id",
            "auth.github_client_id",
            &args.github_client_id,
        ),
        (
            "github-client-secret",
            "auth.github_client_secret",
            &args.github_client_secret,
        ),
        ("github-org", "auth.github_org", &args.github_org),
        ("jwt-secret", "auth.jwt_secret", &args.jwt_secret),
    ] {
        flag(&mut flags, name, key, value);
    }
    flags
}

fn client_flags(args: &ClientArgs) -> Vec<FlagValue> {
    let mut flags = common_flags(&args.common);
    flag(&mut flags, "server-url", "server_url", &args.server_url);
    flag(&mut flags, "target-url", "target", &args.target_url);
    flag(&mut flags, "token", "token", &args.token);
    flag(&mut flags, "timeout", "timeout", &args.timeout);
    flag(
        &mut flags,
        "metrics-listen",
        "metrics_listen",
        &args.metrics_listen,
    );
    if args.insecure {
        flags.push(FlagValue {
            flag: "insecure",
            key: "insecure",
            value: config::Value::from(true),
        });
    }
    flags
}

fn duration(value: Option<Text<super::raw::Dur>>, default: Duration) -> Duration {
    value.map_or(default, |text| text.0.0)
}

fn size(value: Option<Text<super::raw::Size>>, default: u64) -> u64 {
    value.map_or(default, |text| text.0.0)
}

fn text(value: Option<String>, default: &str) -> String {
    value.unwrap_or_else(|| default.to_owned())
}

/// Resolves a secret given as `key` or as `key_file`; the later layer wins,
/// and both in one layer is an error.
fn secret(
    value: Option<String>,
    file: Option<String>,
    key: &str,
    origins: &mut Origins,
    problems: &mut Vec<String>,
) -> Secret {
    let file_key = format!("{key}_file");
    let file = file.filter(|path| !path.is_empty());
    let Some(path) = file else {
        return Secret::new(value.unwrap_or_default());
    };
    if value.as_ref().is_some_and(|value| !value.is_empty()) {
        match origins.rank(key).cmp(&origins.rank(&file_key)) {
            std::cmp::Ordering::Greater => return Secret::new(value.unwrap_or_default()),
            std::cmp::Ordering::Equal => {
                problems.push(format!(
                    "{}: {key}: set either {key} or {file_key}, not both",
                    origins.get(key)
                ));
                return Secret::default();
            }
            std::cmp::Ordering::Less => {}
        }
    }
    origins.alias(key, &file_key);
    match std::fs::read_to_string(&path) {
        Ok(contents) if !contents.trim().is_empty() => Secret::new(contents.trim_end()),
        Ok(_) => {
            problems.push(format!(
                "{}: {file_key}: {path} is empty: put the secret in it",
                origins.get(&file_key)
            ));
            Secret::default()
        }
        Err(error) => {
            problems.push(format!(
                "{}: {file_key}: cannot read {path}: {error}",
                origins.get(&file_key)
            ));
            Secret::default()
        }
    }
}

fn validate_server(
    gathered: Gathered<RawServer>,
    port: Option<u16>,
) -> Result<Loaded<ServerConfig>, ConfigErrors> {
    let Gathered {
        raw,
        mut origins,
        mut watch,
        flag_rank,
        mut problems,
    } = gathered;
    let defaults = ServerConfig::default();

    let mut listen: SocketAddr = raw.listen.map_or(defaults.listen, |text| text.0);
    if let Some(port) = port {
        listen.set_port(port);
        origins.record("listen", flag_rank, Origin::Flag("port".to_owned()));
    }
    let mut secrets = Secrets {
        origins: &mut origins,
        problems: &mut problems,
        watch: &mut watch,
    };
    let config = ServerConfig {
        listen,
        public_url: raw.public_url.and_then(|text| text.0.0),
        state_dir: raw.state_dir.map_or(defaults.state_dir, PathBuf::from),
        log_level: raw.log_level.map_or(defaults.log_level, |text| text.0),
        log_format: raw.log_format.map_or(defaults.log_format, |text| text.0),
        trusted_proxies: raw
            .trusted_proxies
            .map_or(defaults.trusted_proxies, |list| list.0),
        limits: limits(raw.limits.unwrap_or_default()),
        channels: channels(raw.channels.unwrap_or_default()),
        auth: auth(raw.auth.unwrap_or_default(), &mut secrets),
        cluster: cluster(raw.cluster.unwrap_or_default(), &mut secrets),
    };

    check_server_rules(&config, &origins, &mut problems);
    if problems.is_empty() {
        Ok(Loaded {
            config,
            origins,
            watch,
        })
    } else {
        Err(ConfigErrors(problems))
    }
}

/// What resolving a secret records: its origin, its problems, its file.
struct Secrets<'a> {
    origins: &'a mut Origins,
    problems: &'a mut Vec<String>,
    watch: &'a mut WatchSet,
}

impl Secrets<'_> {
    fn resolve(&mut self, value: Option<String>, file: Option<String>, key: &str) -> Secret {
        if let Some(path) = &file {
            self.watch.add_file(path);
        }
        secret(value, file, key, self.origins, self.problems)
    }
}

fn limits(raw: super::raw::RawLimits) -> Limits {
    let defaults = Limits::default();
    Limits {
        max_body: size(raw.max_body, defaults.max_body),
        request_timeout: duration(raw.request_timeout, defaults.request_timeout),
        header_timeout: duration(raw.header_timeout, defaults.header_timeout),
        max_header_bytes: size(raw.max_header_bytes, defaults.max_header_bytes),
        drain_timeout: duration(raw.drain_timeout, defaults.drain_timeout),
        max_channels: raw.max_channels.unwrap_or(defaults.max_channels),
    }
}

fn channels(raw: super::raw::RawChannels) -> Channels {
    let defaults = Channels::default();
    Channels {
        cleanup_interval: duration(raw.cleanup_interval, defaults.cleanup_interval),
        idle_ttl: duration(raw.idle_ttl, defaults.idle_ttl),
        offline: raw.offline.map_or(defaults.offline, |text| text.0),
        queue_max: raw.queue_max.unwrap_or(defaults.queue_max),
        queue_max_bytes: size(raw.queue_max_bytes, defaults.queue_max_bytes),
        queue_ttl: duration(raw.queue_ttl, defaults.queue_ttl),
    }
}

fn auth(raw: super::raw::RawAuth, secrets: &mut Secrets<'_>) -> Auth {
    let defaults = Auth::default();
    let url = |value: Option<Text<super::raw::MaybeUrl>>, default: String| {
        value.and_then(|text| text.0.0).unwrap_or(default)
    };
    Auth {
        github_client_id: text(raw.github_client_id, &defaults.github_client_id),
        github_client_secret: secrets.resolve(
            raw.github_client_secret,
            raw.github_client_secret_file,
            "auth.github_client_secret",
        ),
        github_org: text(raw.github_org, &defaults.github_org),
        jwt_secret: secrets.resolve(raw.jwt_secret, raw.jwt_secret_file, "auth.jwt_secret"),
        github_url: url(raw.github_url, defaults.github_url),
        github_api_url: url(raw.github_api_url, defaults.github_api_url),
        session_ttl: duration(raw.session_ttl, defaults.session_ttl),
        channel_ttl: duration(raw.channel_ttl, defaults.channel_ttl),
    }
}

fn cluster(raw: super::raw::RawCluster, secrets: &mut Secrets<'_>) -> Cluster {
    let defaults = Cluster::default();
    Cluster {
        peer_domain: text(raw.peer_domain, &defaults.peer_domain),
        peers: raw.peers.map_or(defaults.peers, |list| {
            list.0.into_iter().map(|peer| peer.0).collect()
        }),
        bind_addr: text(raw.bind_addr, &defaults.bind_addr),
        memberlist_port: raw.memberlist_port.unwrap_or(defaults.memberlist_port),
        sync_interval: duration(raw.sync_interval, defaults.sync_interval),
        advertise_addr: text(raw.advertise_addr, &defaults.advertise_addr),
        secret: secrets.resolve(raw.secret, raw.secret_file, "cluster.secret"),
    }
}

/// Keys that only make sense together.
fn check_server_rules(config: &ServerConfig, origins: &Origins, problems: &mut Vec<String>) {
    let auth = &config.auth;
    if auth.enabled() {
        let origin = origins.get("auth.github_client_id");
        for (key, missing) in [
            (
                "auth.github_client_secret",
                auth.github_client_secret.is_empty(),
            ),
            ("auth.jwt_secret", auth.jwt_secret.is_empty()),
        ] {
            if missing {
                problems.push(format!(
                    "{origin}: {key}: missing: auth mode (auth.github_client_id is set) needs it; set {key} or {key}_file"
                ));
            }
        }
    }
    let cluster = &config.cluster;
    let clustered = if !cluster.peers.is_empty() {
        Some("cluster.peers")
    } else if !cluster.peer_domain.is_empty() {
        Some("cluster.peer_domain")
    } else {
        None
    };
    for (key, value) in [
        ("cluster.bind_addr", &cluster.bind_addr),
        ("cluster.advertise_addr", &cluster.advertise_addr),
    ] {
        if !value.is_empty() && value.parse::<IpAddr>().is_err() {
            problems.push(format!(
                "{}: {key}: {value:?} is not an IP address; write one such as 10.0.0.5 (bind_addr: 0.0.0.0 for every interface)",
                origins.get(key)
            ));
        }
    }
    if let Some(why) = clustered
        && auth.jwt_secret.is_empty()
    {
        problems.push(format!(
            "{}: auth.jwt_secret: missing: clustering ({why} is set) needs a jwt_secret shared by every replica; set auth.jwt_secret or auth.jwt_secret_file",
            origins.get(why)
        ));
    }
}

/// The top-level client keys every profile inherits unless it overrides them.
struct Inherited {
    server_url: Option<String>,
    target: Option<Target>,
    token: Secret,
    insecure: bool,
    timeout: Option<Duration>,
    offline: Option<super::OfflinePolicy>,
}

fn validate_client(
    gathered: Gathered<RawClient>,
    selected: &[String],
    env: &EnvVars,
) -> Result<Loaded<ClientConfig>, ConfigErrors> {
    let Gathered {
        raw,
        mut origins,
        mut watch,
        mut problems,
        ..
    } = gathered;
    let top = Inherited {
        server_url: raw.server_url.and_then(|text| text.0.0),
        target: raw.target.map(|text| text.0),
        token: secret(
            raw.token,
            raw.token_file.clone(),
            "token",
            &mut origins,
            &mut problems,
        ),
        insecure: raw.insecure.unwrap_or(false),
        timeout: timeout(raw.timeout.map_or(Duration::from_secs(10), |text| text.0.0)),
        offline: raw.offline.and_then(|text| text.0.0),
    };
    if let Some(path) = &raw.token_file {
        watch.add_file(path);
    }

    let configured = raw.profiles.unwrap_or_default();
    let mut profiles = Vec::new();
    if configured.is_empty() {
        profiles.extend(unnamed_profile(&top, &mut origins, &mut problems));
    }
    for (name, raw_profile) in configured.iter() {
        if let Some(path) = &raw_profile.token_file {
            watch.add_file(path);
        }
        if let Some(profile) = profile(name, raw_profile, &top, &mut origins, &mut problems) {
            profiles.push(profile);
        }
    }
    let names: Vec<&String> = configured.keys().collect();
    for wanted in selected {
        let known = names.contains(&wanted) || (names.is_empty() && wanted == DEFAULT_PROFILE);
        if !known {
            let list = if names.is_empty() {
                "none are configured".to_owned()
            } else {
                format!(
                    "configured: {}",
                    names
                        .iter()
                        .map(|name| name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            problems.push(format!("flag --profile: unknown profile {wanted:?} ({list}); add [profiles.{wanted}] to client.toml or pick a configured one"));
        }
    }
    if !selected.is_empty() {
        profiles.retain(|profile| selected.contains(&profile.name));
    }
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let config = ClientConfig {
        state_dir: raw
            .state_dir
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| default_client_state_dir(env), PathBuf::from),
        log_level: raw.log_level.map_or(LogLevel::Info, |text| text.0),
        log_format: raw.log_format.map_or(LogFormat::Text, |text| text.0),
        history_max: raw.history_max.unwrap_or(1000),
        history_body_max: raw.history_body_max.map_or(1 << 20, |text| text.0.0),
        metrics_listen: raw.metrics_listen.and_then(|text| text.0.0),
        profiles,
    };
    Ok(Loaded {
        config,
        origins,
        watch,
    })
}

/// `0` disables the timeout.
fn timeout(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// The one profile built from the top-level keys when none is configured.
fn unnamed_profile(
    top: &Inherited,
    origins: &mut Origins,
    problems: &mut Vec<String>,
) -> Option<Profile> {
    let prefix = format!("profiles.{DEFAULT_PROFILE}");
    for key in [
        "server_url",
        "target",
        "token",
        "insecure",
        "timeout",
        "offline",
    ] {
        origins.alias(&format!("{prefix}.{key}"), key);
    }
    let Some(server_url) = top.server_url.clone() else {
        // Given but refused: that problem is reported already.
        if problems
            .iter()
            .any(|problem| problem.contains("server_url"))
        {
            return None;
        }
        problems.push("server_url: missing: pass --server-url (or set WOW_SERVER_URL, or server_url in client.toml), or configure [profiles.NAME] in client.toml".to_owned());
        return None;
    };
    let target = match &top.target {
        Some(target) => target.clone(),
        None => DEFAULT_TARGET.parse().ok()?,
    };
    Some(Profile {
        name: DEFAULT_PROFILE.to_owned(),
        server_url,
        target,
        token: top.token.clone(),
        insecure: top.insecure,
        timeout: top.timeout,
        offline: top.offline,
    })
}

/// A configured profile: its own keys, else the top-level ones.
fn profile(
    name: &str,
    raw: &RawProfile,
    top: &Inherited,
    origins: &mut Origins,
    problems: &mut Vec<String>,
) -> Option<Profile> {
    let prefix = format!("profiles.{name}");
    let defined_in = origins.under(&prefix).unwrap_or(Origin::Default);
    for key in [
        "server_url",
        "target",
        "token",
        "insecure",
        "timeout",
        "offline",
    ] {
        let own = format!("{prefix}.{key}");
        if !origins.is_set(&own) && !origins.is_set(&format!("{own}_file")) {
            origins.alias(&own, key);
        }
    }
    let token = if raw.token.is_some() || raw.token_file.is_some() {
        secret(
            raw.token.clone(),
            raw.token_file.clone(),
            &format!("{prefix}.token"),
            origins,
            problems,
        )
    } else {
        top.token.clone()
    };
    let server_url = raw
        .server_url
        .as_ref()
        .and_then(|text| text.0.0.clone())
        .or_else(|| top.server_url.clone());
    // A top-level target applies to profiles only when it was written, not
    // the unnamed profile's built-in default.
    let target = raw
        .target
        .as_ref()
        .map(|text| text.0.clone())
        .or_else(|| top.target.clone());
    let mut missing = |key: &str, how: &str| {
        // Given but refused: that problem is reported already.
        let named = format!("{prefix}.{key}:");
        if !problems.iter().any(|problem| problem.contains(&named)) {
            problems.push(format!("{defined_in}: {prefix}.{key}: missing: {how}"));
        }
    };
    if server_url.is_none() {
        missing(
            "server_url",
            &format!("set server_url in [{prefix}] or at the top level, or pass --server-url"),
        );
    }
    if target.is_none() {
        missing(
            "target",
            &format!("set target in [{prefix}], e.g. target = \"http://localhost:3000/webhooks\""),
        );
    }
    Some(Profile {
        name: name.to_owned(),
        server_url: server_url?,
        target: target?,
        token,
        insecure: raw.insecure.unwrap_or(top.insecure),
        timeout: raw
            .timeout
            .as_ref()
            .map_or(top.timeout, |text| timeout(text.0.0)),
        offline: raw.offline.as_ref().map_or(top.offline, |text| text.0.0),
    })
}

/// A base URL: `http(s)://host[:port][/path]`, kept without a trailing slash.
///
/// # Errors
///
/// A message naming the expected form.
pub fn base_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|_| {
        format!("invalid URL {text:?}: write it like \"https://hooks.example.com\"")
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "invalid URL {text:?}: only http and https are supported"
        ));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "invalid URL {text:?}: give scheme, host, optional port and path only"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `$STATE_DIRECTORY` under systemd, else `$XDG_STATE_HOME/wow`, else
/// `~/.local/state/wow`.
pub fn default_client_state_dir(env: &EnvVars) -> PathBuf {
    if let Some(dir) = env.get("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env.get("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("wow");
    }
    let home = env
        .get("HOME")
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/wow")
}
