//! TLS client on rustls with the `ring` provider: webpki roots plus `tls.extra_ca`. The SNI
//! name and the certificate name are always the configured hostname, whichever resolver (or
//! last-good cache) produced the address.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Why a TLS set-up or handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls.extra_ca` could not be read or holds no certificate.
    #[error("tls.extra_ca = {path}: {why}; point it at a PEM file of CA certificates")]
    ExtraCa {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The hostname is not a valid TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    BadName(String),
    /// The handshake failed (certificate, protocol, or connection).
    #[error("TLS handshake with {host} failed: {source}")]
    Handshake {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A shareable TLS client configuration.
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl TlsClient {
    /// Webpki roots plus the PEM certificates in `extra_ca`, if given.
    pub fn new(extra_ca: Option<&Path>) -> Result<TlsClient, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let err = |why: String| TlsError::ExtraCa { path: path.display().to_string(), why };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate in the file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::ExtraCa { path: "-".into(), why: e.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient { connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)) })
    }

    /// Runs the handshake on `tcp` with SNI and certificate name `host`.
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>, TlsError> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| TlsError::BadName(host.to_string()))?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|source| TlsError::Handshake { host: host.to_string(), source })
    }
}
