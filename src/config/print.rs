//! `--print-config`: the effective configuration as TOML a user could have
//! written (`timeout = "7s"`, `max_body = "25MiB"`), secrets as `"***"`,
//! each key followed by the layer it came from. The same flat list of keys
//! is what a reload compares to say what changed.

use std::time::Duration;

use toml::Value;

use super::load::Origins;
use super::{ClientConfig, Profile, ServerConfig, format_duration, format_size};
use crate::Secret;
use crate::secret::MASK;

/// One key of the effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Dotted path, `limits.max_body`.
    pub key: String,
    /// The value as a user writes it; a secret's real value, masked when printed.
    pub value: Value,
    /// Whether the value must never be shown.
    pub secret: bool,
}

impl Entry {
    fn new(key: impl Into<String>, value: impl Into<Value>) -> Self {
        Entry {
            key: key.into(),
            value: value.into(),
            secret: false,
        }
    }

    fn secret(key: impl Into<String>, secret: &Secret) -> Self {
        Entry {
            key: key.into(),
            value: Value::String(secret.expose().to_owned()),
            secret: true,
        }
    }

    /// The value as printed: a set secret shows as `"***"`.
    pub fn shown(&self) -> String {
        match &self.value {
            Value::String(text) if self.secret && !text.is_empty() => format!("\"{MASK}\""),
            value => value.to_string(),
        }
    }
}

fn duration(duration: Duration) -> Value {
    Value::String(format_duration(duration))
}

fn size(bytes: u64) -> Value {
    Value::String(format_size(bytes))
}

fn integer(number: impl TryInto<i64>) -> Value {
    Value::Integer(number.try_into().unwrap_or(i64::MAX))
}

fn strings<T: ToString>(items: &[T]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|item| Value::String(item.to_string()))
            .collect(),
    )
}

/// Every key of a server configuration, in the order SPEC §2 lists them.
pub fn server_entries(config: &ServerConfig) -> Vec<Entry> {
    let (limits, channels, auth, cluster) = (
        &config.limits,
        &config.channels,
        &config.auth,
        &config.cluster,
    );
    vec![
        Entry::new("listen", config.listen.to_string()),
        Entry::new("public_url", config.public_url.clone().unwrap_or_default()),
        Entry::new("state_dir", config.state_dir.display().to_string()),
        Entry::new("log_level", config.log_level.as_str()),
        Entry::new("log_format", config.log_format.as_str()),
        Entry::new("trusted_proxies", strings(&config.trusted_proxies)),
        Entry::new("limits.max_body", size(limits.max_body)),
        Entry::new("limits.request_timeout", duration(limits.request_timeout)),
        Entry::new("limits.header_timeout", duration(limits.header_timeout)),
        Entry::new("limits.max_header_bytes", size(limits.max_header_bytes)),
        Entry::new("limits.drain_timeout", duration(limits.drain_timeout)),
        Entry::new("limits.max_channels", integer(limits.max_channels)),
        Entry::new(
            "channels.cleanup_interval",
            duration(channels.cleanup_interval),
        ),
        Entry::new("channels.idle_ttl", duration(channels.idle_ttl)),
        Entry::new("channels.offline", channels.offline.as_str()),
        Entry::new("channels.queue_max", integer(channels.queue_max)),
        Entry::new("channels.queue_max_bytes", size(channels.queue_max_bytes)),
        Entry::new("channels.queue_ttl", duration(channels.queue_ttl)),
        Entry::new("auth.github_client_id", auth.github_client_id.clone()),
        Entry::secret("auth.github_client_secret", &auth.github_client_secret),
        Entry::new("auth.github_org", auth.github_org.clone()),
        Entry::secret("auth.jwt_secret", &auth.jwt_secret),
        Entry::new("auth.github_url", auth.github_url.clone()),
        Entry::new("auth.github_api_url", auth.github_api_url.clone()),
        Entry::new("auth.session_ttl", duration(auth.session_ttl)),
        Entry::new("auth.channel_ttl", duration(auth.channel_ttl)),
        Entry::new("cluster.peer_domain", cluster.peer_domain.clone()),
        Entry::new("cluster.peers", strings(&cluster.peers)),
        Entry::new("cluster.bind_addr", cluster.bind_addr.clone()),
        Entry::new("cluster.memberlist_port", integer(cluster.memberlist_port)),
        Entry::new("cluster.sync_interval", duration(cluster.sync_interval)),
        Entry::new("cluster.advertise_addr", cluster.advertise_addr.clone()),
        Entry::secret("cluster.secret", &cluster.secret),
    ]
}

/// Every key of a client configuration: the global ones, then each
/// profile with every value it runs with (its own or inherited).
pub fn client_entries(config: &ClientConfig) -> Vec<Entry> {
    let mut entries = vec![
        Entry::new("state_dir", config.state_dir.display().to_string()),
        Entry::new("log_level", config.log_level.as_str()),
        Entry::new("log_format", config.log_format.as_str()),
        Entry::new("history_max", integer(config.history_max)),
        Entry::new("history_body_max", size(config.history_body_max)),
        Entry::new(
            "metrics_listen",
            config
                .metrics_listen
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
        ),
    ];
    for profile in &config.profiles {
        entries.extend(profile_entries(profile));
    }
    entries
}

/// The keys of one profile, `profiles.NAME.*`.
pub fn profile_entries(profile: &Profile) -> Vec<Entry> {
    let key = |name: &str| format!("profiles.{}.{name}", profile.name);
    vec![
        Entry::new(key("target"), profile.target.to_string()),
        Entry::new(key("server_url"), profile.server_url.clone()),
        Entry::secret(key("token"), &profile.token),
        Entry::new(key("insecure"), profile.insecure),
        Entry::new(
            key("timeout"),
            duration(profile.timeout.unwrap_or_default()),
        ),
        Entry::new(
            key("offline"),
            profile.offline.map_or("", |policy| policy.as_str()),
        ),
    ]
}

/// The entries as TOML, each key followed by `# from <layer>`.
pub fn render(entries: &[Entry], origins: &Origins) -> String {
    let mut out = String::new();
    let mut section = "";
    for entry in entries {
        let (table, name) = entry.key.rsplit_once('.').unwrap_or(("", &entry.key));
        if table != section {
            out.push_str(&format!("\n[{table}]\n"));
            section = table;
        }
        let origin = origins.get(&entry.key);
        out.push_str(&format!("{name} = {}  # from {origin}\n", entry.shown()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_defaults_parse_back_and_hide_secrets() {
        let mut config = ServerConfig::default();
        config.auth.jwt_secret = Secret::new("very-secret-key");
        let text = render(&server_entries(&config), &Origins::default());
        assert!(!text.contains("very-secret-key"), "{text}");
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["limits"]["max_body"].as_str(), Some("25MiB"));
        assert_eq!(table["auth"]["jwt_secret"].as_str(), Some("***"));
        assert!(
            text.contains("listen = \"0.0.0.0:8080\"  # from default"),
            "{text}"
        );
    }
}
