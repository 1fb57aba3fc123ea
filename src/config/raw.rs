//! Configuration as users write it: every key optional, unknown keys
//! refused, every value checked as it is read so that a bad one is reported
//! with the file and key it came from. Each field is the key of SPEC §2 of
//! the same name; `load` turns these into the validated types.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::load::base_url;
use super::{LogFormat, LogLevel, OfflinePolicy, parse_duration, parse_size};
use crate::client::Target;

/// A value read from its written form (`"30s"`, `"25MiB"`, `"info"`).
pub(crate) trait FromText: Sized {
    /// Reads the value, or says what is wrong and how to write it.
    fn from_text(text: &str) -> Result<Self, String>;
}

/// A key whose value is written as text and parsed on reading.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text<T>(pub T);

impl<'de, T: FromText> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        T::from_text(&text).map(Text).map_err(de::Error::custom)
    }
}

/// A list written as an array or as one comma-separated string (the only
/// way to give one in an environment variable).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct List<T>(pub Vec<T>);

impl<'de, T: FromText> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);

        impl<'de, T: FromText> Visitor<'de> for ListVisitor<T> {
            type Value = List<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings or one comma-separated string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<List<T>, E> {
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| T::from_text(item).map_err(E::custom))
                    .collect::<Result<_, _>>()
                    .map(List)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<List<T>, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = items.next_element::<Text<T>>()? {
                    list.push(item.0);
                }
                Ok(List(list))
            }
        }

        deserializer.deserialize_any(ListVisitor(PhantomData))
    }
}

/// A duration such as `30s`; `0` where the key allows "never".
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dur(pub Duration);

/// A size in bytes such as `25MiB`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Size(pub u64);

/// A base URL, or empty for "not set".
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MaybeUrl(pub Option<String>);

/// An offline policy, or empty for "the server's default".
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MaybeOffline(pub Option<OfflinePolicy>);

/// A socket address, or empty for "none".
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MaybeAddr(pub Option<SocketAddr>);

/// Any string, kept as written (lists of `host:port` peers).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plain(pub String);

impl FromText for Dur {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_duration(text).map(Dur)
    }
}

impl FromText for Size {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_size(text).map(Size)
    }
}

impl FromText for MaybeUrl {
    fn from_text(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(MaybeUrl(None));
        }
        base_url(text).map(|url| MaybeUrl(Some(url)))
    }
}

impl FromText for MaybeAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(MaybeAddr(None));
        }
        SocketAddr::from_text(text).map(|address| MaybeAddr(Some(address)))
    }
}

impl FromText for MaybeOffline {
    fn from_text(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(MaybeOffline(None));
        }
        text.parse().map(|policy| MaybeOffline(Some(policy)))
    }
}

impl FromText for Plain {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(Plain(text.trim().to_owned()))
    }
}

impl FromText for SocketAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("invalid address {text:?}: write it like \"0.0.0.0:8080\""))
    }
}

impl FromText for IpNet {
    fn from_text(text: &str) -> Result<Self, String> {
        let text = text.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("invalid network {text:?}: write it like \"10.0.0.0/8\""))
    }
}

impl FromText for Target {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

macro_rules! from_str_text {
    ($($type:ty),+) => {
        $(impl FromText for $type {
            fn from_text(text: &str) -> Result<Self, String> {
                text.parse()
            }
        })+
    };
}

from_str_text!(LogLevel, LogFormat, OfflinePolicy);

/// `server.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<Text<SocketAddr>>,
    pub public_url: Option<Text<MaybeUrl>>,
    pub state_dir: Option<String>,
    pub log_level: Option<Text<LogLevel>>,
    pub log_format: Option<Text<LogFormat>>,
    pub trusted_proxies: Option<List<IpNet>>,
    pub limits: Option<RawLimits>,
    pub channels: Option<RawChannels>,
    pub auth: Option<RawAuth>,
    pub cluster: Option<RawCluster>,
}

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_body: Option<Text<Size>>,
    pub request_timeout: Option<Text<Dur>>,
    pub header_timeout: Option<Text<Dur>>,
    pub max_header_bytes: Option<Text<Size>>,
    pub drain_timeout: Option<Text<Dur>>,
    pub max_channels: Option<usize>,
}

/// `[channels]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChannels {
    pub cleanup_interval: Option<Text<Dur>>,
    pub idle_ttl: Option<Text<Dur>>,
    pub offline: Option<Text<OfflinePolicy>>,
    pub queue_max: Option<u64>,
    pub queue_max_bytes: Option<Text<Size>>,
    pub queue_ttl: Option<Text<Dur>>,
}

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub github_client_id: Option<String>,
    pub github_client_secret: Option<String>,
    pub github_client_secret_file: Option<String>,
    pub github_org: Option<String>,
    pub jwt_secret: Option<String>,
    pub jwt_secret_file: Option<String>,
    pub github_url: Option<Text<MaybeUrl>>,
    pub github_api_url: Option<Text<MaybeUrl>>,
    pub session_ttl: Option<Text<Dur>>,
    pub channel_ttl: Option<Text<Dur>>,
}

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub peer_domain: Option<String>,
    pub peers: Option<List<Plain>>,
    pub bind_addr: Option<String>,
    pub memberlist_port: Option<u16>,
    pub sync_interval: Option<Text<Dur>>,
    pub advertise_addr: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
}

/// `client.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClient {
    pub server_url: Option<Text<MaybeUrl>>,
    pub target: Option<Text<Target>>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub insecure: Option<bool>,
    pub timeout: Option<Text<Dur>>,
    pub state_dir: Option<String>,
    pub log_level: Option<Text<LogLevel>>,
    pub log_format: Option<Text<LogFormat>>,
    pub offline: Option<Text<MaybeOffline>>,
    pub history_max: Option<usize>,
    pub history_body_max: Option<Text<Size>>,
    pub metrics_listen: Option<Text<MaybeAddr>>,
    pub profiles: Option<BTreeMap<String, RawProfile>>,
}

/// `[profiles.NAME]` as written: a target and overrides of top-level keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub target: Option<Text<Target>>,
    pub server_url: Option<Text<MaybeUrl>>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub insecure: Option<bool>,
    pub timeout: Option<Text<Dur>>,
    pub offline: Option<Text<MaybeOffline>>,
}
