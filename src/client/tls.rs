//! The client's WebSocket connection to the server: through an HTTP proxy
//! when `HTTPS_PROXY`/`HTTP_PROXY` say so (and `NO_PROXY` does not), with
//! TLS against the system's trust store, or no verification at all with
//! `--insecure`.

use std::sync::Arc;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tower_service::Service;

/// The client's end of a tunnel WebSocket.
pub type ClientSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bytes tungstenite reads per system call, and keeps allocated (and
/// zeroed, so resident) per connection: 16 KiB instead of its 128 KiB
/// default, so a client holding thousands of profiles stays small. A 64 KiB
/// DATA frame then takes four reads, which costs little next to copying it.
const READ_BUFFER: usize = 16 * 1024;

/// Opens the WebSocket described by `request`, with `config`'s limits and
/// a [`READ_BUFFER`]-sized read buffer.
///
/// # Errors
///
/// Whatever stops the connection or the handshake; an HTTP answer other
/// than 101 comes back as [`WsError::Http`] with the server's body.
pub async fn connect(
    request: Request,
    config: WebSocketConfig,
    insecure: bool,
    proxies: &Matcher,
) -> Result<ClientSocket, WsError> {
    let config = config.read_buffer_size(READ_BUFFER);
    let connector = insecure.then(|| Connector::Rustls(Arc::new(insecure_config())));
    let Some((proxy, destination)) = proxy_for(request.uri(), proxies) else {
        let (socket, _response) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            connector,
        )
        .await?;
        return Ok(socket);
    };

    let stream = tunnel(&proxy, destination).await?;
    let (socket, _response) =
        tokio_tungstenite::client_async_tls_with_config(request, stream, Some(config), connector)
            .await?;
    Ok(socket)
}

/// The proxy for a `ws(s)://` URI, if the environment names one for it,
/// and the `host:port` to ask the proxy for.
fn proxy_for(uri: &Uri, proxies: &Matcher) -> Option<(Intercept, Uri)> {
    let (scheme, default_port) = match uri.scheme_str()? {
        "wss" => ("https", 443),
        "ws" => ("http", 80),
        _ => return None,
    };
    let authority = uri.authority()?;
    let port = authority.port_u16().unwrap_or(default_port);
    let destination: Uri = format!("{scheme}://{}:{port}/", authority.host())
        .parse()
        .ok()?;
    let proxy = proxies.intercept(&destination)?;
    Some((proxy, destination))
}

/// Opens a TCP tunnel to `destination` through `proxy` with HTTP CONNECT.
async fn tunnel(proxy: &Intercept, destination: Uri) -> Result<TcpStream, WsError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut tunnel = Tunnel::new(proxy.uri().clone(), connector);
    if let Some(auth) = proxy.basic_auth() {
        tunnel = tunnel.with_auth(auth.clone());
    }
    let failed = |error: Box<dyn std::error::Error + Send + Sync>| {
        WsError::Io(std::io::Error::other(format!(
            "proxy {} refused the tunnel: {error}",
            proxy.uri()
        )))
    };
    std::future::poll_fn(|cx| tunnel.poll_ready(cx))
        .await
        .map_err(|error| failed(error.into()))?;
    let io = tunnel
        .call(destination)
        .await
        .map_err(|error| failed(error.into()))?;
    Ok(io.into_inner())
}

/// A TLS configuration that accepts any certificate (`--insecure`).
fn insecure_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
        .with_no_client_auth()
}

/// Skips every check: the user asked for it with `--insecure`.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::CryptoProvider::get_default()
            .map(|provider| {
                provider
                    .signature_verification_algorithms
                    .supported_schemes()
            })
            .unwrap_or_else(|| {
                rustls::crypto::aws_lc_rs::default_provider()
                    .signature_verification_algorithms
                    .supported_schemes()
            })
    }
}
