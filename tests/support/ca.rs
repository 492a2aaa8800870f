//! A throw-away certificate authority for loopback TLS servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// The name [`TestCa::bad_server_config`] issues its certificate for.
pub const WRONG_NAME: &str = "wrong-name.invalid";

/// A CA made for one test: `ca.pem` in the given directory, leaf certificates on demand.
pub struct TestCa {
    /// `<dir>/ca.pem`, the CA certificate in PEM form.
    pub ca_path: PathBuf,
    /// The CA certificate in PEM form (same content as the file).
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// Makes a CA and writes its certificate to `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "tickguard test CA");
        params.distinguished_name.push(DnType::OrganizationName, "tickguard tests");
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_pem = cert.pem();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).expect("write ca.pem");
        TestCa { ca_path, ca_pem, ca_der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// The CA certificate in DER form.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A server config whose certificate covers `names` (DNS names or IP addresses), signed by
    /// this CA. The chain sent is leaf + CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (leaf, key) = self.issue(names);
        server_config_from(vec![leaf, self.ca_der.clone()], key)
    }

    /// A server config with a certificate signed by this CA for [`WRONG_NAME`] only, so a client
    /// that expects any other name fails its handshake (name mismatch).
    pub fn bad_server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config(&[WRONG_NAME])
    }

    /// A rustls client config that trusts only this CA (ring provider).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add CA root");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A `tokio_rustls` connector over [`TestCa::client_config`].
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client_config())
    }

    /// tickguard's own HTTP connector trusting only this CA, with no resolver to ask (the
    /// broker tests give it `127.0.0.1` addresses) and a 2 s connect timeout.
    pub fn tickguard_connector(&self) -> tickguard::net::http::Connector {
        let dns = tickguard::net::dns::DnsConfig {
            use_system: false,
            resolv_conf: "/nonexistent".into(),
            nameservers: Vec::new(),
            timeout: std::time::Duration::from_millis(300),
            cap: std::time::Duration::from_millis(600),
        };
        tickguard::net::http::Connector {
            resolver: Arc::new(tickguard::net::dns::Resolver::new(dns)),
            tls: tickguard::net::tls::TlsClient::new(Some(&self.ca_path)).expect("tls client"),
            connect_timeout: std::time::Duration::from_secs(2),
            fresh: std::time::Duration::from_secs(60),
        }
    }

    fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "leaf".to_owned()));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }
}

/// A server config with a self-signed certificate (no CA at all) for `names`: any client that
/// verifies certificates rejects it (unknown issuer).
pub fn self_signed_config(names: &[&str]) -> Arc<rustls::ServerConfig> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("self-signed params");
    params.distinguished_name.push(DnType::CommonName, "self-signed test cert");
    let key = KeyPair::generate().expect("self-signed key");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    server_config_from(vec![cert.der().clone()], key)
}

/// `ServerName` for a host string (DNS name or IP literal); panics on an invalid name.
pub fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned()).expect("valid server name")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config_from(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<rustls::ServerConfig> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    Arc::new(config)
}
