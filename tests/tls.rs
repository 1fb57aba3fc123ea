//! The client speaks TLS to the relay: it verifies the relay's certificate
//! against the system's trust store (here `SSL_CERT_FILE`), refuses (and
//! keeps retrying) a certificate it cannot verify, and skips the check
//! only with `--insecure`.

mod common;

use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A TLS-terminating front on 127.0.0.1 that passes connections to `backend`.
async fn tls_front(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    backend: std::net::SocketAddr,
) -> (u16, Background<()>) {
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, Background(Some(task)))
}

fn client_args<'a>(
    server_url: &'a str,
    target: &'a str,
    state: &'a std::path::Path,
) -> Vec<&'a str> {
    vec![
        "--server-url",
        server_url,
        "--target-url",
        target,
        "--state-dir",
        state.to_str().unwrap(),
        "--config-dir",
        "/nonexistent-wow-test-config",
    ]
}

#[tokio::test]
async fn a_certificate_from_the_trust_store_is_accepted() {
    within(STEP, async {
        // A private CA, trusted through SSL_CERT_FILE, signs the relay's certificate.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let app = start_app(|_| Reply::new(200, "verified")).await;
        let server = start_server(|_| {}).await;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let (port, _front) =
            tls_front(vec![leaf.der().clone(), ca.der().clone()], key, server.addr).await;

        let server_url = format!("https://127.0.0.1:{port}");
        let state = tempfile::tempdir().unwrap();
        let env = [("SSL_CERT_FILE", ca_file.to_str().unwrap())];
        let mut client = spawn_binary_env(
            "wow-client",
            &client_args(&server_url, &app.url, state.path()),
            &env,
            None,
            "",
        );
        // The relay builds URLs from what it saw: plain HTTP, as this front
        // sends no X-Forwarded-Proto. Senders reach it through the front.
        let url = client.attached().await.replacen("http://", "https://", 1);
        let answer = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .no_proxy()
            .build()
            .unwrap()
            .post(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.text().await.unwrap(), "verified");
    })
    .await;
}

#[tokio::test]
async fn an_unverifiable_certificate_is_refused_unless_insecure() {
    within(STEP, async {
        let self_signed = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let app = start_app(|_| Reply::new(200, "insecure")).await;
        let server = start_server(|_| {}).await;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            self_signed.signing_key.serialize_der(),
        ));
        let (port, _front) =
            tls_front(vec![self_signed.cert.der().clone()], key, server.addr).await;
        let server_url = format!("https://127.0.0.1:{port}");

        // Without --insecure: a certificate error, retried, never an exit.
        let state = tempfile::tempdir().unwrap();
        let (seen, refused) = tokio::sync::oneshot::channel();
        let mut strict = spawn_binary(
            "wow-client",
            &client_args(&server_url, &app.url, state.path()),
            Some(seen),
            "reconnecting",
        );
        let line = within(STEP, refused).await.unwrap();
        assert!(line.to_lowercase().contains("certificate"), "{line}");
        assert!(
            strict.child.try_wait().unwrap().is_none(),
            "the client must keep retrying"
        );

        let state = tempfile::tempdir().unwrap();
        let mut args = client_args(&server_url, &app.url, state.path());
        args.push("--insecure");
        let mut insecure = spawn_binary("wow-client", &args, None, "");
        let url = insecure.attached().await.replacen("http://", "https://", 1);
        let answer = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .no_proxy()
            .build()
            .unwrap()
            .post(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.text().await.unwrap(), "insecure");
    })
    .await;
}
