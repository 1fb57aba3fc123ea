//! Command-line flags of both binaries (SPEC §1). Every value stays a
//! string here; it is checked with the other layers, so a bad flag is
//! reported like a bad key.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Flags both binaries take.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Read this file instead of the system and user files (repeatable; later wins)
    #[arg(long = "config", value_name = "FILE", global = true)]
    pub config: Vec<PathBuf>,

    /// The system config folder [env: WOW_CONFIG_DIR] [default: /etc/wow]
    #[arg(long, value_name = "DIR", global = true)]
    pub config_dir: Option<PathBuf>,

    /// Where durable state lives (channels, tokens, queues)
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<String>,

    /// error, warn, info, debug or trace [default: info]
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,

    /// text, json or journald [default: text]
    #[arg(long, value_name = "FMT", global = true)]
    pub log_format: Option<String>,

    /// Print the effective configuration (secrets as ***) and exit
    #[arg(long)]
    pub print_config: bool,

    /// Check the configuration, print every problem, exit 0 or 2
    #[arg(long)]
    pub check_config: bool,
}

/// `wow-server`: the public relay.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "wow-server",
    version,
    about = "Public relay of wow (webhook-over-websocket)"
)]
pub struct ServerArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,

    /// Port to listen on, on all addresses [default: 8080]
    #[arg(short, long, value_name = "PORT")]
    pub port: Option<String>,

    /// Address to listen on, e.g. 127.0.0.1:8080 (overrides --port)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Base of webhook URLs, e.g. https://hooks.example.com [default: from each /new request]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Largest request body; larger ones get 413 [default: 25MiB]
    #[arg(long, value_name = "SIZE")]
    pub max_body: Option<String>,

    /// Issued channels never attached expire after this [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub cleanup_duration: Option<String>,

    /// DNS name whose A records are the cluster peers
    #[arg(long, value_name = "NAME")]
    pub peer_domain: Option<String>,

    /// Gossip port [default: 7946]
    #[arg(long, value_name = "PORT")]
    pub memberlist_port: Option<String>,

    /// How often peers are re-resolved and synced [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub memberlist_sync_duration: Option<String>,

    /// GitHub OAuth App client id (turns auth mode on)
    #[arg(long, value_name = "ID")]
    pub github_client_id: Option<String>,

    /// GitHub OAuth App client secret
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    pub github_client_secret: Option<String>,

    /// GitHub organisation users must belong to
    #[arg(long, value_name = "ORG")]
    pub github_org: Option<String>,

    /// Key that signs channel and session tokens
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// `wow-client`: the local agent.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "wow-client",
    version,
    about = "Local agent of wow (webhook-over-websocket)"
)]
pub struct ClientArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,

    /// The relay, e.g. https://hooks.example.com
    #[arg(long, value_name = "URL", global = true)]
    pub server_url: Option<String>,

    /// Where requests go [default: http://localhost:3000]
    #[arg(long, value_name = "URL")]
    pub target_url: Option<String>,

    /// Session token of an auth-mode server (used for /new)
    #[arg(long, value_name = "TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Skip TLS verification towards the server
    #[arg(long, global = true)]
    pub insecure: bool,

    /// Run only this profile (repeatable) [default: every configured one]
    #[arg(long = "profile", value_name = "NAME", global = true)]
    pub profiles: Vec<String>,

    /// Per request to the local app; 0 disables [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Forget the saved channel and get a new webhook URL
    #[arg(long)]
    pub reset_channel: bool,

    /// What to do instead of running the tunnels
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
}

/// Subcommands of `wow-client`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Run a local app that answers every request with a JSON description of it
    Echo {
        /// Address to listen on
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
        listen: String,
    },
    /// Show each profile of the running client: its webhook URL, target and whether it is attached
    Status,
    /// List the deliveries kept in the local history, newest last
    History {
        /// Show at most this many deliveries
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// One JSON object per delivery
        #[arg(long)]
        json: bool,
        /// Show one delivery in full: the request as the app got it and its answer
        #[arg(long, value_name = "ID")]
        show: Option<String>,
        /// With --show: write the request body to stdout, byte for byte
        #[arg(long, requires = "show")]
        raw: bool,
    },
    /// Send a delivery from the history again, byte for byte, with X-Wow-Replay-Of
    Replay {
        /// The delivery's id (or its first characters)
        id: String,
        /// Send it here instead of the profile's current target
        #[arg(long, value_name = "URL")]
        target: Option<String>,
    },
    /// Sign in to an auth-mode server with GitHub and store the session token
    ///
    /// Runs GitHub's device flow through the server: open the page it names and
    /// enter the code. With --token, stores that token instead (the one the
    /// server's /auth/github page shows).
    Login,
}
