//! Builds the validated configuration from the command line.

use std::path::PathBuf;
use std::time::Duration;

use super::args::{ClientArgs, ServerArgs};
use super::{
    ClientConfig, DEFAULT_PROFILE, LogFormat, LogLevel, Profile, ServerConfig, parse_duration,
    parse_size,
};
use crate::Secret;

/// Every problem found in a configuration, each naming where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Collects problems instead of stopping at the first.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn take<T>(&mut self, flag: &str, result: Result<T, String>) -> Option<T> {
        result
            .map_err(|error| self.0.push(format!("flag --{flag}: {error}")))
            .ok()
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

/// The server configuration from defaults and flags.
///
/// # Errors
///
/// Every flag with a bad value.
pub fn server(args: &ServerArgs) -> Result<ServerConfig, ConfigErrors> {
    let mut config = ServerConfig::default();
    let mut problems = Problems::default();
    common(
        &args.common,
        &mut problems,
        &mut config.log_level,
        &mut config.log_format,
    );
    if let Some(dir) = &args.common.state_dir {
        config.state_dir = PathBuf::from(dir);
    }
    if let Some(port) = &args.port {
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("invalid port {port:?}"));
        if let Some(port) = problems.take("port", port) {
            config.listen.set_port(port);
        }
    }
    if let Some(listen) = &args.listen {
        let listen = listen
            .parse()
            .map_err(|_| format!("invalid address {listen:?}: write it like \"127.0.0.1:8080\""));
        if let Some(listen) = problems.take("listen", listen) {
            config.listen = listen;
        }
    }
    if let Some(url) = &args.public_url
        && let Some(url) = problems.take("public-url", base_url(url))
    {
        config.public_url = Some(url);
    }
    if let Some(size) = &args.max_body
        && let Some(size) = problems.take("max-body", parse_size(size))
    {
        config.limits.max_body = size;
    }
    if let Some(secret) = &args.jwt_secret {
        config.auth.jwt_secret = Secret::new(secret.clone());
    }
    problems.finish(config)
}

/// The client configuration from defaults and flags: one unnamed profile.
///
/// # Errors
///
/// Every flag with a bad value.
pub fn client(args: &ClientArgs) -> Result<ClientConfig, ConfigErrors> {
    let mut problems = Problems::default();
    let mut log_level = LogLevel::Info;
    let mut log_format = LogFormat::Text;
    common(&args.common, &mut problems, &mut log_level, &mut log_format);
    let state_dir = args
        .common
        .state_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(default_client_state_dir);

    let server_url = match &args.server_url {
        Some(url) => problems.take("server-url", base_url(url)),
        None => {
            problems.0.push("flag --server-url: missing; pass the relay's URL, e.g. --server-url https://hooks.example.com".to_owned());
            None
        }
    };
    let target = args
        .target_url
        .as_deref()
        .unwrap_or("http://localhost:3000");
    let target = problems.take("target-url", target.parse());
    let timeout = match &args.timeout {
        Some(text) => problems
            .take("timeout", parse_duration(text))
            .unwrap_or_default(),
        None => Duration::from_secs(10),
    };
    let profiles = match (server_url, target) {
        (Some(server_url), Some(target)) => vec![Profile {
            name: DEFAULT_PROFILE.to_owned(),
            server_url,
            target,
            token: Secret::new(args.token.clone().unwrap_or_default()),
            insecure: args.insecure,
            timeout: (!timeout.is_zero()).then_some(timeout),
            offline: None,
        }],
        _ => Vec::new(),
    };
    problems.finish(ClientConfig {
        state_dir,
        log_level,
        log_format,
        history_max: 1000,
        profiles,
    })
}

fn common(
    args: &super::args::CommonArgs,
    problems: &mut Problems,
    log_level: &mut LogLevel,
    log_format: &mut LogFormat,
) {
    if let Some(level) = &args.log_level
        && let Some(level) = problems.take("log-level", level.parse())
    {
        *log_level = level;
    }
    if let Some(format) = &args.log_format
        && let Some(format) = problems.take("log-format", format.parse())
    {
        *log_format = format;
    }
}

/// A base URL: `http(s)://host[:port][/path]`, kept without a trailing slash.
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
pub fn default_client_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("wow");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/wow")
}
