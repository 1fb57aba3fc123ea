//! Configuration layers (SPEC §2): one test per layer proving precedence,
//! `--config` replacing the file layers, errors naming file and key, all at
//! once, `--print-config` without secrets, and the shipped examples.
//!
//! The loader reads an explicit environment ([`EnvVars`]), so no test
//! touches the process environment; binaries get theirs through
//! `Command::env`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use clap::Parser;
use wow::config::args::{ClientArgs, ServerArgs};
use wow::config::{EnvVars, Origin, load};

fn env(pairs: &[(&str, &str)]) -> EnvVars {
    pairs.iter().copied().collect()
}

fn server_args(args: &[&str]) -> ServerArgs {
    ServerArgs::try_parse_from(std::iter::once("wow-server").chain(args.iter().copied())).unwrap()
}

fn client_args(args: &[&str]) -> ClientArgs {
    ClientArgs::try_parse_from(std::iter::once("wow-client").chain(args.iter().copied())).unwrap()
}

/// A config folder with `server.toml`/`client.toml` and drop-ins.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn str(&self) -> &str {
        self.0.path().to_str().unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn run(binary: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let program = match binary {
        "wow-server" => env!("CARGO_BIN_EXE_wow-server"),
        _ => env!("CARGO_BIN_EXE_wow-client"),
    };
    let mut command = std::process::Command::new(program);
    command.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// ---------------------------------------------------------------- layers

#[test]
fn defaults_apply_when_no_layer_sets_a_key() {
    let dir = Dir::new();
    let loaded = load::server(&server_args(&["--config-dir", dir.str()]), &env(&[])).unwrap();
    assert_eq!(loaded.config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(loaded.config.limits.max_body, 25 << 20);
    assert_eq!(
        loaded.config.channels.cleanup_interval,
        Duration::from_secs(300)
    );
    assert_eq!(loaded.origins.get("limits.max_body"), Origin::Default);
}

#[test]
fn the_system_file_overrides_defaults() {
    let dir = Dir::new();
    let file = dir.write(
        "server.toml",
        "listen = \"127.0.0.1:9000\"\n[limits]\nmax_body = \"1MiB\"\n",
    );
    let loaded = load::server(&server_args(&["--config-dir", dir.str()]), &env(&[])).unwrap();
    assert_eq!(loaded.config.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(loaded.config.limits.max_body, 1 << 20);
    assert_eq!(
        loaded.config.limits.request_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(loaded.origins.get("limits.max_body"), Origin::File(file));
}

#[test]
fn dropins_override_the_system_file_in_name_order() {
    let dir = Dir::new();
    dir.write(
        "server.toml",
        "[limits]\nmax_body = \"1MiB\"\nrequest_timeout = \"5s\"\n",
    );
    dir.write("server.d/20-late.toml", "[limits]\nmax_body = \"3MiB\"\n");
    dir.write(
        "server.d/10-early.toml",
        "[limits]\nmax_body = \"2MiB\"\nmax_channels = 7\n",
    );
    dir.write("server.d/notes.txt", "not = \"read\"\n");
    let loaded = load::server(&server_args(&["--config-dir", dir.str()]), &env(&[])).unwrap();
    assert_eq!(loaded.config.limits.max_body, 3 << 20);
    assert_eq!(loaded.config.limits.max_channels, 7);
    assert_eq!(loaded.config.limits.request_timeout, Duration::from_secs(5));
    assert!(
        loaded
            .origins
            .get("limits.max_body")
            .to_string()
            .ends_with("20-late.toml")
    );
}

#[test]
fn the_user_file_overrides_dropins() {
    let dir = Dir::new();
    dir.write(
        "etc/client.toml",
        "server_url = \"http://127.0.0.1:1\"\ntimeout = \"5s\"\n",
    );
    dir.write(
        "etc/client.d/10.toml",
        "timeout = \"6s\"\ninsecure = true\n",
    );
    let user = dir.write("home/.config/wow/client.toml", "timeout = \"7s\"\n");
    let etc = dir.path().join("etc");
    let args = client_args(&["--config-dir", etc.to_str().unwrap()]);
    let home = dir.path().join("home");
    let loaded = load::client(&args, &env(&[("HOME", home.to_str().unwrap())])).unwrap();
    let profile = &loaded.config.profiles[0];
    assert_eq!(profile.name, "default");
    assert_eq!(profile.timeout, Some(Duration::from_secs(7)));
    assert!(profile.insecure);
    assert_eq!(loaded.origins.get("timeout"), Origin::File(user));

    // $XDG_CONFIG_HOME moves the user file.
    let xdg = dir.path().join("xdg");
    dir.write("xdg/wow/client.toml", "timeout = \"8s\"\n");
    let vars = env(&[
        ("HOME", home.to_str().unwrap()),
        ("XDG_CONFIG_HOME", xdg.to_str().unwrap()),
    ]);
    let loaded = load::client(&args, &vars).unwrap();
    assert_eq!(
        loaded.config.profiles[0].timeout,
        Some(Duration::from_secs(8))
    );
}

#[test]
fn the_environment_overrides_files() {
    let dir = Dir::new();
    dir.write(
        "client.toml",
        "server_url = \"http://127.0.0.1:1\"\ntimeout = \"5s\"\n[profiles.stripe]\ntarget = \"http://127.0.0.1:2/a\"\n",
    );
    let args = client_args(&["--config-dir", dir.str()]);
    let vars = env(&[
        // The prefix trap of DEPENDENCIES.md: a single `_` after WOW.
        ("WOW_TIMEOUT", "9s"),
        ("WOW_PROFILES__STRIPE__TARGET", "http://127.0.0.1:3/b"),
        ("WOW_LOG_LEVEL", "debug"),
    ]);
    let loaded = load::client(&args, &vars).unwrap();
    let stripe = &loaded.config.profiles[0];
    assert_eq!(stripe.timeout, Some(Duration::from_secs(9)));
    assert_eq!(stripe.target.to_string(), "http://127.0.0.1:3/b");
    assert_eq!(loaded.config.log_level, wow::config::LogLevel::Debug);
    assert_eq!(
        loaded.origins.get("profiles.stripe.target").to_string(),
        "environment WOW_PROFILES__STRIPE__TARGET"
    );

    let server = load::server(
        &server_args(&["--config-dir", dir.str()]),
        &env(&[
            ("WOW_AUTH__JWT_SECRET", "0123456789"),
            ("WOW_LIMITS__MAX_BODY", "2MiB"),
            ("WOW_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
            ("WOW_CLUSTER__MEMBERLIST_PORT", "7000"),
        ]),
    )
    .unwrap();
    // Kept as text: a numeric-looking secret keeps its leading zero.
    assert_eq!(server.config.auth.jwt_secret.expose(), "0123456789");
    assert_eq!(server.config.limits.max_body, 2 << 20);
    assert_eq!(server.config.trusted_proxies.len(), 2);
    assert_eq!(server.config.cluster.memberlist_port, 7000);
}

#[test]
fn flags_override_the_environment() {
    let dir = Dir::new();
    dir.write("server.toml", "listen = \"127.0.0.1:9000\"\n");
    let vars = env(&[
        ("WOW_LIMITS__MAX_BODY", "2MiB"),
        ("WOW_CHANNELS__CLEANUP_INTERVAL", "1m"),
    ]);
    let args = server_args(&[
        "--config-dir",
        dir.str(),
        "--max-body",
        "4MiB",
        "--port",
        "9100",
        "--cleanup-duration",
        "90s",
    ]);
    let loaded = load::server(&args, &vars).unwrap();
    assert_eq!(loaded.config.limits.max_body, 4 << 20);
    // --port changes only the port of `listen`.
    assert_eq!(loaded.config.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(
        loaded.config.channels.cleanup_interval,
        Duration::from_secs(90)
    );
    assert_eq!(
        loaded.origins.get("limits.max_body").to_string(),
        "flag --max-body"
    );
    assert_eq!(loaded.origins.get("listen").to_string(), "flag --port");

    let client = client_args(&[
        "--server-url",
        "http://127.0.0.1:5",
        "--target-url",
        "http://127.0.0.1:6/x",
        "--timeout",
        "0",
        "--config-dir",
        dir.str(),
    ]);
    let vars = env(&[
        ("WOW_TARGET", "http://127.0.0.1:7/y"),
        ("WOW_TIMEOUT", "3s"),
    ]);
    let loaded = load::client(&client, &vars).unwrap();
    assert_eq!(
        loaded.config.profiles[0].target.to_string(),
        "http://127.0.0.1:6/x"
    );
    assert_eq!(loaded.config.profiles[0].timeout, None);
}

#[test]
fn config_flags_replace_the_file_layers_and_the_later_wins() {
    let dir = Dir::new();
    dir.write("server.toml", "[limits]\nmax_channels = 5\n");
    dir.write("server.d/10.toml", "[limits]\nmax_body = \"9MiB\"\n");
    let first = dir.write(
        "first.toml",
        "[limits]\nmax_body = \"1MiB\"\nrequest_timeout = \"3s\"\n",
    );
    let second = dir.write("second.toml", "[limits]\nmax_body = \"2MiB\"\n");
    let args = server_args(&[
        "--config-dir",
        dir.str(),
        "--config",
        first.to_str().unwrap(),
        "--config",
        second.to_str().unwrap(),
    ]);
    let loaded = load::server(&args, &env(&[])).unwrap();
    assert_eq!(loaded.config.limits.max_body, 2 << 20);
    assert_eq!(loaded.config.limits.request_timeout, Duration::from_secs(3));
    assert_eq!(
        loaded.config.limits.max_channels, 10_000,
        "server.toml is not read"
    );

    // WOW_CONFIG_DIR moves the system files like --config-dir.
    let loaded = load::server(&server_args(&[]), &env(&[("WOW_CONFIG_DIR", dir.str())])).unwrap();
    assert_eq!(loaded.config.limits.max_channels, 5);
    assert_eq!(loaded.config.limits.max_body, 9 << 20);
}

#[test]
fn secrets_come_from_files_and_the_later_layer_wins() {
    let dir = Dir::new();
    let secret = dir.write("jwt.key", "from-a-file\n");
    dir.write(
        "server.toml",
        &format!("[auth]\njwt_secret_file = {:?}\n", secret.to_str().unwrap()),
    );
    let args = server_args(&["--config-dir", dir.str()]);
    let loaded = load::server(&args, &env(&[])).unwrap();
    assert_eq!(loaded.config.auth.jwt_secret.expose(), "from-a-file");
    assert!(
        loaded.watch.files.contains(&secret),
        "a secret file is watched too"
    );

    let loaded = load::server(&args, &env(&[("WOW_AUTH__JWT_SECRET", "from-env")])).unwrap();
    assert_eq!(loaded.config.auth.jwt_secret.expose(), "from-env");
}

#[test]
fn profiles_inherit_top_level_keys_and_override_them() {
    let dir = Dir::new();
    dir.write(
        "client.toml",
        r#"
server_url = "http://127.0.0.1:1"
timeout = "4s"
token = "top-token"
[profiles.stripe]
target = "http://127.0.0.1:2/stripe"
[profiles.github]
target = "http://127.0.0.1:3/github"
server_url = "http://127.0.0.1:9"
timeout = "0"
token = "own-token"
"#,
    );
    let loaded = load::client(&client_args(&["--config-dir", dir.str()]), &env(&[])).unwrap();
    let names: Vec<&str> = loaded
        .config
        .profiles
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["github", "stripe"]);
    let github = &loaded.config.profiles[0];
    let stripe = &loaded.config.profiles[1];
    assert_eq!(stripe.server_url, "http://127.0.0.1:1");
    assert_eq!(stripe.timeout, Some(Duration::from_secs(4)));
    assert_eq!(stripe.token.expose(), "top-token");
    assert_eq!(github.server_url, "http://127.0.0.1:9");
    assert_eq!(github.timeout, None);
    assert_eq!(github.token.expose(), "own-token");

    let only = load::client(
        &client_args(&["--config-dir", dir.str(), "--profile", "stripe"]),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(only.config.profiles.len(), 1);
    assert_eq!(only.config.profiles[0].name, "stripe");
}

// ---------------------------------------------------------------- errors

#[test]
fn every_problem_is_reported_at_once_with_file_and_key_and_exit_2() {
    let dir = Dir::new();
    let main = dir.write(
        "server.toml",
        "listen = \"127.0.0.1:9000\"\nlisten_port = 1\n[limits]\nmax_channels = \"many\"\n",
    );
    let dropin = dir.write(
        "server.d/10.toml",
        "[channels]\ncleanup_interval = \"soon\"\n[auth]\ngithub_client_id = \"Iv1.abc\"\n",
    );
    let output = run(
        "wow-server",
        &[
            "--config-dir",
            dir.str(),
            "--check-config",
            "--max-body",
            "huge",
        ],
        &[("WOW_CLUSTER__SYNC_INTERVAL", "often")],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    let main = main.display().to_string();
    let dropin = dropin.display().to_string();
    for expected in [
        format!("{main}: listen_port: unknown key"),
        format!("{main}: limits.max_channels: expected an integer"),
        format!("{dropin}: channels.cleanup_interval: invalid duration \"soon\""),
        "environment WOW_CLUSTER__SYNC_INTERVAL: cluster.sync_interval: invalid duration"
            .to_owned(),
        "flag --max-body: limits.max_body: invalid size \"huge\"".to_owned(),
        format!("{dropin}: auth.github_client_secret: missing"),
        format!("{dropin}: auth.jwt_secret: missing"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(text.lines().count(), 7, "one line per problem:\n{text}");
    assert!(
        text.lines().all(|line| line.starts_with("error: ")),
        "{text}"
    );
}

#[test]
fn a_syntax_error_and_a_missing_required_key_name_their_place() {
    let dir = Dir::new();
    let broken = dir.write("client.d/10.toml", "timeout = \"5s\"\n[profiles.a\n");
    dir.write(
        "client.toml",
        "[profiles.stripe]\ntarget = \"http://127.0.0.1:2\"\n",
    );
    let output = run(
        "wow-client",
        &["--config-dir", dir.str(), "--check-config"],
        &[],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("{}: line 2, column", broken.display())),
        "{text}"
    );
    assert!(
        text.contains("profiles.stripe.server_url: missing"),
        "the missing key is named too:\n{text}"
    );
}

#[test]
fn clustering_needs_a_shared_jwt_secret() {
    let dir = Dir::new();
    let args = server_args(&["--config-dir", dir.str(), "--peer-domain", "wow.internal"]);
    let errors = load::server(&args, &env(&[])).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors:?}");
    assert!(
        errors.0[0].starts_with("flag --peer-domain: auth.jwt_secret: missing"),
        "{errors:?}"
    );
}

#[test]
fn an_unknown_profile_lists_the_configured_ones() {
    let dir = Dir::new();
    dir.write(
        "client.toml",
        "server_url = \"http://127.0.0.1:1\"\n[profiles.stripe]\ntarget = \"http://127.0.0.1:2\"\n[profiles.github]\ntarget = \"http://127.0.0.1:3\"\n",
    );
    let output = run(
        "wow-client",
        &["--config-dir", dir.str(), "--profile", "slack"],
        &[],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("unknown profile \"slack\" (configured: github, stripe)"),
        "{text}"
    );
}

#[test]
fn check_config_passes_a_valid_configuration() {
    let dir = Dir::new();
    dir.write("server.toml", "[limits]\nmax_body = \"1MiB\"\n");
    let output = run(
        "wow-server",
        &["--config-dir", dir.str(), "--check-config"],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

// ---------------------------------------------------------------- printing

#[test]
fn print_config_hides_secrets_shows_origins_and_parses_back() {
    let dir = Dir::new();
    let secret_file = dir.write("github.secret", "file-secret-value\n");
    let file = dir.write(
        "server.toml",
        &format!(
            "[limits]\nrequest_timeout = \"7s\"\n[auth]\ngithub_client_id = \"Iv1.abc\"\ngithub_client_secret_file = {:?}\n[cluster]\nsecret = \"cluster-secret-value\"\n",
            secret_file.to_str().unwrap()
        ),
    );
    let output = run(
        "wow-server",
        &[
            "--config-dir",
            dir.str(),
            "--print-config",
            "--jwt-secret",
            "flag-secret-value",
        ],
        &[("WOW_LIMITS__MAX_BODY", "5MiB")],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    for secret in [
        "file-secret-value",
        "cluster-secret-value",
        "flag-secret-value",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    let file = file.display().to_string();
    for line in [
        format!("request_timeout = \"7s\"  # from {file}"),
        "max_body = \"5MiB\"  # from environment WOW_LIMITS__MAX_BODY".to_owned(),
        "jwt_secret = \"***\"  # from flag --jwt-secret".to_owned(),
        format!("github_client_secret = \"***\"  # from {file}"),
        "max_header_bytes = \"64KiB\"  # from default".to_owned(),
        "idle_ttl = \"168h\"  # from default".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.lines()
            .all(|l| l.is_empty() || l.starts_with('[') || l.contains("  # from ")),
        "every key shows its origin:\n{text}"
    );
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(table["limits"]["max_body"].as_str(), Some("5MiB"));

    // What was printed is a configuration that loads to the same values.
    let printed = dir.write("printed.toml", &text.replace("\"***\"", "\"x\""));
    let output = run(
        "wow-server",
        &["--config", printed.to_str().unwrap(), "--check-config"],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn client_print_config_shows_each_profile_without_its_token() {
    let dir = Dir::new();
    dir.write(
        "client.toml",
        "server_url = \"http://127.0.0.1:1\"\ntoken = \"session-token-value\"\n[profiles.stripe]\ntarget = \"http://127.0.0.1:2/s\"\n",
    );
    let output = run(
        "wow-client",
        &[
            "--config-dir",
            dir.str(),
            "--print-config",
            "--timeout",
            "7s",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("session-token-value"), "{text}");
    assert!(text.contains("[profiles.stripe]"), "{text}");
    assert!(
        text.contains("timeout = \"7s\"  # from flag --timeout"),
        "{text}"
    );
    assert!(text.contains("token = \"***\""), "{text}");
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(
        table["profiles"]["stripe"]["target"].as_str(),
        Some("http://127.0.0.1:2/s")
    );
}

// ---------------------------------------------------------------- shipped examples

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("etc/wow")
        .join(name)
}

#[test]
fn the_shipped_examples_parse_and_list_every_key_with_its_default() {
    for name in ["server.toml", "client.toml"] {
        let text = std::fs::read_to_string(shipped(name)).unwrap();
        text.parse::<toml::Table>().unwrap();
        // Uncommented, the example is the defaults (plus one sample profile).
        let uncommented: String = text
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|rest| is_setting(rest))
                    .unwrap_or(line)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        uncommented
            .parse::<toml::Table>()
            .unwrap_or_else(|error| panic!("{name}: {error}"));
    }
    let server = load::server(
        &server_args(&["--config", shipped("server.toml").to_str().unwrap()]),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(server.config, wow::config::ServerConfig::default());

    let output = run(
        "wow-server",
        &[
            "--check-config",
            "--config",
            shipped("server.toml").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = run(
        "wow-client",
        &[
            "--check-config",
            "--config",
            shipped("client.toml").to_str().unwrap(),
            "--server-url",
            "http://127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

/// A commented-out `key = value` line or `[section]` header.
fn is_setting(line: &str) -> bool {
    let head = line.split(" = ").next().unwrap_or("");
    (line.starts_with('[') && line.ends_with(']'))
        || (line.contains(" = ") && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

#[test]
fn every_key_of_the_shipped_examples_is_a_known_key_with_its_default() {
    let dir = Dir::new();
    for (binary, name, extra) in [
        ("wow-server", "server.toml", Vec::<&str>::new()),
        ("wow-client", "client.toml", vec![]),
    ] {
        let text = std::fs::read_to_string(shipped(name)).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|rest| is_setting(rest))
                    .unwrap_or(line)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let path = dir.write(name, &uncommented);
        let mut args = vec!["--check-config", "--config", path.to_str().unwrap()];
        args.extend(extra);
        let output = run(binary, &args, &[]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{name} uncommented:\n{}",
            stderr(&output)
        );
    }
}
