//! `deploy/` matches the code: the Kubernetes manifest's server.toml passes
//! `wow-server --check-config`, its ports, probes and `POD_IP` are the ones
//! the relay uses, and Traefik polls `/traefik-config` with the bearer.

mod common;

use std::path::Path;

use common::*;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The `server.toml: |` block of the ConfigMap, unindented.
fn embedded_server_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|line| line.trim() != "server.toml: |");
    lines.next().expect("the ConfigMap holds server.toml");
    lines
        .take_while(|line| line.trim() != "---")
        .map(|line| line.strip_prefix("    ").unwrap_or(line.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_kubernetes_manifest_configures_a_valid_cluster() {
    within(STEP, async {
        let manifest = deploy("kubernetes/wow-server.yaml");
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        std::fs::write(secrets.join("jwt-secret"), "a-jwt-secret-for-the-test").unwrap();
        std::fs::write(secrets.join("cluster-secret"), "a-cluster-secret").unwrap();
        let toml = embedded_server_toml(&manifest)
            .replace("/etc/wow/secrets", secrets.to_str().unwrap())
            .replace("/var/lib/wow", dir.path().join("state").to_str().unwrap());
        assert!(
            toml.contains("[cluster]") && toml.contains("peer_domain"),
            "{toml}"
        );
        let config = dir.path().join("server.toml");
        std::fs::write(&config, &toml).unwrap();

        let mut check = spawn_binary(
            "wow-server",
            &[
                "--check-config",
                "--config",
                config.to_str().unwrap(),
                "--config-dir",
                "/nonexistent-wow-test-config",
            ],
            None,
            "",
        );
        let code = exit_code(&mut check).await;
        assert_eq!(code, Some(0), "{}", check.all_stderr().await);

        // What the relay listens and gossips on, the pods expose and probe.
        for needle in [
            "listen = \"0.0.0.0:8080\"",
            "memberlist_port = 7946",
            "containerPort: 8080",
            "containerPort: 7946",
            "port: 7946",
            "fieldPath: status.podIP",
            "name: POD_IP",
            "path: /readyz",
            "path: /healthz",
            "clusterIP: None",
            "publishNotReadyAddresses: true",
            "peer_domain = \"wow-server-gossip.wow.svc.cluster.local\"",
            "name: wow-server-gossip",
            "mountPath: /etc/wow/server.toml",
            "mountPath: /var/lib/wow",
            "secret_file = \"/etc/wow/secrets/cluster-secret\"",
            "cluster-secret:",
            "jwt-secret:",
        ] {
            assert!(
                manifest.contains(needle),
                "wow-server.yaml lacks {needle:?}"
            );
        }
    })
    .await;
}

#[test]
fn traefik_polls_the_cluster_with_the_bearer() {
    let static_config = deploy("traefik/traefik.yml");
    assert!(static_config.contains("endpoint: \"http://wow-server:8080/traefik-config\""));
    assert!(static_config.contains("Authorization: \"Bearer "));
    let manifest = deploy("kubernetes/traefik.yaml");
    assert!(manifest.contains(
        "--providers.http.endpoint=http://wow-server.wow.svc.cluster.local:8080/traefik-config"
    ));
    assert!(
        manifest.contains("--providers.http.headers.Authorization=Bearer $(WOW_CLUSTER_SECRET)")
    );
    assert!(manifest.contains("key: cluster-secret"));
    let nginx = deploy("nginx/wow.conf");
    for needle in [
        "proxy_next_upstream error timeout non_idempotent;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Host $http_host;",
    ] {
        assert!(nginx.contains(needle), "wow.conf lacks {needle:?}");
    }
}

#[tokio::test]
async fn cluster_addresses_that_are_not_ips_are_configuration_errors() {
    within(STEP, async {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("server.toml");
        std::fs::write(
            &config,
            "[auth]\njwt_secret = \"a-shared-secret\"\n[cluster]\npeers = [\"10.0.0.2:7946\"]\n\
             bind_addr = \"eth0\"\nadvertise_addr = \"pod.example\"\n",
        )
        .unwrap();
        let mut check = spawn_binary(
            "wow-server",
            &["--check-config", "--config", config.to_str().unwrap()],
            None,
            "",
        );
        assert_eq!(exit_code(&mut check).await, Some(2));
        let stderr = check.all_stderr().await;
        assert!(
            stderr.contains("cluster.bind_addr: \"eth0\" is not an IP address"),
            "{stderr}"
        );
        assert!(
            stderr.contains("cluster.advertise_addr: \"pod.example\""),
            "{stderr}"
        );
    })
    .await;
}
