//! wow: webhook-over-websocket.
//!
//! A public relay (`wow-server`) accepts webhooks and carries them over an
//! outbound WebSocket held by a local agent (`wow-client`), which replays
//! each request to a local app and carries the app's answer back.
//!
//! # Layout
//!
//! - [`protocol`]: frames between server and client, streams and credit windows.
//! - [`link`]: one WebSocket as both sides run it (batched writes, pings, liveness).
//! - [`server`]: the relay: HTTP routes, channel registry, sessions, tokens.
//! - [`client`]: the agent: tunnels per profile, forwarding to the local app.
//! - [`headers`]: which headers cross the tunnel.
//! - [`idle`]: timeouts that count from the last progress of a body.
//! - [`config`]: the configuration's layers, validation and units.
//! - [`reload`]: SIGHUP and file-watch reloads through one control channel.
//! - [`daemon`]: logging set-up and signals.
//! - [`files`]: private files in a state dir.
//! - [`telemetry`]: Prometheus metrics: names, recorder, rendering.
//! - [`Secret`]: values that never print.

pub mod client;
pub mod config;
pub mod daemon;
pub mod files;
pub mod headers;
pub mod idle;
pub mod link;
pub mod protocol;
pub mod reload;
mod secret;
pub mod server;
pub mod telemetry;

pub use secret::Secret;
