//! TLS for the load's clients: rustls with its `ring` provider.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::VerifyError;

/// How the load's clients speak TLS. Build with [`ClientTls::insecure`] or
/// [`ClientTls::with_ca_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTls {
    /// Accept any certificate (a self-signed one, say); the handshake's
    /// signatures are still checked. Meant for tests on 127.0.0.1.
    pub insecure: bool,
    /// Trust the certificates in this PEM file (unless `insecure`).
    pub ca_file: Option<PathBuf>,
    /// The name sent in SNI and checked in the certificate; `None` (the
    /// default) uses the address's IP.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// TLS that accepts any certificate (`--insecure`).
    pub fn insecure() -> ClientTls {
        ClientTls {
            insecure: true,
            ca_file: None,
            server_name: None,
        }
    }

    /// TLS that trusts the certificates in the PEM file `path`.
    pub fn with_ca_file(path: impl Into<PathBuf>) -> ClientTls {
        ClientTls {
            insecure: false,
            ca_file: Some(path.into()),
            server_name: None,
        }
    }

    /// A rustls configuration offering `alpn`.
    pub(crate) fn connector(
        &self,
        alpn: &[&[u8]],
        addr: std::net::SocketAddr,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), VerifyError> {
        let invalid = |problem: String| VerifyError::InvalidConfig {
            field: "tls",
            problem,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("rustls: {e}")))?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth()
        } else {
            let Some(path) = &self.ca_file else {
                return Err(invalid(
                    "TLS needs a way to trust the server: a CA file (--ca-file PATH) or \
                     --insecure (any certificate, for self-signed ones)"
                        .to_owned(),
                ));
            };
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    invalid(format!("{}: not a PEM certificate: {e}", path.display()))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!(
                    "{} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| invalid(format!("server name {name:?}: {e}")))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    }
}

/// Accepts any certificate, but checks the handshake signatures with it.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
