//! `wow-client history` and `wow-client replay`: the delivery history as
//! lines, as JSON, one delivery in full, and sending one again.

use std::io::Write;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::history::{Entry, History, KeptBody};
use super::{Forwarder, Target};
use crate::config::ClientConfig;

/// Bodies longer than this are summarised rather than printed (bytes).
const PRINTED_BODY_MAX: usize = 64 * 1024;

/// Writes the newest `limit` deliveries (of `profile`), oldest first: one
/// delivery line plus its id each, or one JSON object each with `json`.
///
/// # Errors
///
/// When the history cannot be read or the output cannot be written.
pub fn write_list(
    out: &mut impl Write,
    history: &History,
    profile: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    for entry in history.list(profile, limit)? {
        if json {
            writeln!(out, "{}", serde_json::to_string(&entry.summary())?)?;
        } else {
            writeln!(out, "{}", line(&entry))?;
        }
    }
    Ok(())
}

/// The delivery line of SPEC §1 followed by the delivery's id.
pub fn line(entry: &Entry) -> String {
    let id = entry
        .delivery
        .id
        .map_or_else(|| "-".to_owned(), |id| id.to_string());
    let mut line = format!("{} {id}", entry.delivery);
    if let Some(original) = entry.replay_of {
        line.push_str(&format!(" replay-of={original}"));
    }
    line
}

/// Writes one delivery in full: the request as the app received it, then
/// the app's answer.
///
/// # Errors
///
/// When the output cannot be written.
pub fn write_entry(out: &mut impl Write, entry: &Entry) -> anyhow::Result<()> {
    writeln!(out, "{}", line(entry))?;
    writeln!(out, "target: {}", entry.target)?;
    writeln!(out)?;
    let request = &entry.request;
    let query = request
        .query
        .as_deref()
        .map_or_else(String::new, |query| format!("?{query}"));
    writeln!(out, "> {} {}{query}", request.method, entry.delivery.path)?;
    write_headers(out, ">", &request.headers)?;
    writeln!(out, ">")?;
    write_body(out, &entry.request_body)?;
    writeln!(out)?;
    match &entry.response {
        Some(response) => {
            writeln!(out, "< {}", response.status)?;
            write_headers(out, "<", &response.headers)?;
            writeln!(out, "<")?;
            write_body(out, &entry.response_body)?;
        }
        None => writeln!(
            out,
            "< no answer from the app (the sender got {})",
            entry.delivery.status
        )?,
    }
    Ok(())
}

fn write_headers(out: &mut impl Write, mark: &str, headers: &HeaderMap) -> anyhow::Result<()> {
    for (name, value) in headers {
        writeln!(
            out,
            "{mark} {name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        )?;
    }
    Ok(())
}

/// Prints a body as text when it is printable, else as a summary.
fn write_body(out: &mut impl Write, body: &KeptBody) -> anyhow::Result<()> {
    let text = std::str::from_utf8(&body.bytes)
        .ok()
        .filter(|text| body.bytes.len() <= PRINTED_BODY_MAX && printable(text));
    match text {
        Some(text) => {
            out.write_all(text.as_bytes())?;
            if !text.is_empty() && !text.ends_with('\n') {
                writeln!(out)?;
            }
        }
        None => {
            let head: String = body
                .bytes
                .iter()
                .take(32)
                .map(|byte| format!("{byte:02x}"))
                .collect();
            writeln!(
                out,
                "[binary or long body: {} bytes kept, sha256 {}, starts {head}; --raw writes it]",
                body.bytes.len(),
                hex_digest(&body.bytes)
            )?;
        }
    }
    if body.truncated() {
        writeln!(
            out,
            "[cut: {} of {} bytes kept (history_body_max)]",
            body.bytes.len(),
            body.len
        )?;
    }
    Ok(())
}

fn printable(text: &str) -> bool {
    text.chars()
        .all(|c| !c.is_control() || c == '\n' || c == '\r' || c == '\t')
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Sends a stored delivery again to the target it went to (or to
/// `target`), records the replay, and returns it.
///
/// # Errors
///
/// When the delivery is unknown, its body was cut, a target is not a URL,
/// or the app fails.
pub async fn replay(
    config: &ClientConfig,
    id: &str,
    target: Option<&str>,
) -> anyhow::Result<Entry> {
    let history = History::open_existing(&config.state_dir)?;
    let original = history.find(id)?;
    let profile_name = &original.delivery.profile;
    let profile = config
        .profiles
        .iter()
        .find(|profile| &profile.name == profile_name);
    let target: Target = match target {
        Some(target) => target.parse().map_err(anyhow::Error::msg)?,
        None => original.target.parse().map_err(|error| {
            anyhow::anyhow!(
                "the recorded target {} is not usable ({error}): give one with --target URL",
                original.target
            )
        })?,
    };
    let timeout = profile.and_then(|profile| profile.timeout);
    let forwarder = Forwarder::new().keeping(config.history_body_max);
    let replayed = forwarder
        .replay(profile_name, &target, timeout, &original)
        .await?;
    history.record(std::slice::from_ref(&replayed), config.history_max)?;
    Ok(replayed)
}
