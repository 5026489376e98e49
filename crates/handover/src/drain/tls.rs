//! TLS on drained listeners, with rustls and its `ring` provider (feature
//! `tls`).
//!
//! A [`TlsAcceptor`] does the server side of the handshake on an accepted
//! connection (a [`Tracked`](super::Tracked) stream, which stays counted by
//! the drain under the TLS layer). [`TlsAcceptor::from_pem_files`] offers
//! ALPN `h2` and `http/1.1`, so [`http::serve`](super::http::serve) with
//! [`HttpOptions::tls`](super::http::HttpOptions::tls) speaks HTTP/2 or
//! HTTP/1.1 as the client chose, and drains both without loss.
//!
//! **Renewed certificates.** A process reads its certificate once, when it
//! builds its acceptor. Build it at start-up from the files (as the examples
//! do) and a self-upgrade is also how a renewed certificate is deployed:
//! replace the files, upgrade, and the new process serves every new
//! connection with the new certificate, while the old one finishes its
//! connections with the old certificate.
//!
//! ```no_run
//! use handover::drain::{Drain, Listener, http::{self, HttpOptions}, tls::TlsAcceptor};
//! # async fn run(service: impl hyper::service::Service<hyper::Request<hyper::body::Incoming>,
//! #     Response = hyper::Response<String>, Error = std::convert::Infallible,
//! #     Future: Send + 'static> + Clone + Send + 'static) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsAcceptor::from_pem_files("/etc/app/cert.pem", "/etc/app/key.pem")?;
//! let drain = Drain::new();
//! let listener = Listener::new(tokio::net::TcpListener::bind("127.0.0.1:8443").await?, &drain);
//! http::serve(&listener, service, &HttpOptions::default().tls(tls)).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

/// The rustls crate this module is built on, for building a
/// [`ServerConfig`] of your own (with the same version).
pub use rustls;
/// The TLS stream [`TlsAcceptor::accept`] returns: `get_ref().1` is the
/// rustls connection (ALPN protocol, SNI name, peer certificates).
pub use tokio_rustls::server::TlsStream;

/// Does the server side of TLS handshakes, with a deadline.
///
/// Cheap to clone (the configuration is shared).
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpn: Vec<String> = self
            .config
            .alpn_protocols
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        f.debug_struct("TlsAcceptor")
            .field("alpn", &alpn)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor with `config` as it is (set its `alpn_protocols` to
    /// `h2` and `http/1.1` to offer both HTTP versions).
    pub fn new(config: Arc<ServerConfig>) -> TlsAcceptor {
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(config.clone()),
            config,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// An acceptor for the certificate chain `cert_chain` and the private
    /// key `private_key`, both PEM (the certificate first, then its
    /// issuers; the key in PKCS#8, PKCS#1 or SEC1), offering ALPN `h2` and
    /// `http/1.1`, TLS 1.2 and 1.3, with rustls' `ring` provider.
    pub fn from_pem(cert_chain: &[u8], private_key: &[u8]) -> Result<TlsAcceptor, TlsError> {
        Self::build(cert_chain, private_key, None)
    }

    /// [`from_pem`](TlsAcceptor::from_pem) with the PEM read from files
    /// (read now: a process that starts later reads them anew).
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<TlsAcceptor, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let (cert_path, key_path) = (cert_chain.as_ref(), private_key.as_ref());
        let cert = read(cert_path)?;
        let key = read(key_path)?;
        Self::build(&cert, &key, Some((cert_path, key_path)))
    }

    fn build(
        cert_pem: &[u8],
        key_pem: &[u8],
        paths: Option<(&Path, &Path)>,
    ) -> Result<TlsAcceptor, TlsError> {
        let from = |i: usize| -> String {
            match paths {
                Some(p) => format!(" in {}", [p.0, p.1][i].display()),
                None => String::new(),
            }
        };
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "certificate chain",
                from: from(0),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate { from: from(0) });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
            what: "private key",
            from: from(1),
            source,
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::new(Arc::new(config)))
    }

    /// Sets how long a handshake may take before the connection is closed.
    /// Default: 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsAcceptor {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Does the handshake on `stream`.
    ///
    /// # Errors
    ///
    /// The handshake failed (the error says why), or took longer than the
    /// handshake timeout (kind [`io::ErrorKind::TimedOut`]).
    pub async fn accept<S>(&self, stream: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.handshake_timeout, self.inner.accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TLS handshake not finished after {:?}",
                    self.handshake_timeout
                ),
            )),
        }
    }

    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) fn handshake_deadline(&self) -> Duration {
        self.handshake_timeout
    }

    /// The handshake without the deadline.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) fn handshake<S>(&self, stream: S) -> tokio_rustls::Accept<S>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.inner.accept(stream)
    }
}

/// Why a [`TlsAcceptor`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The PEM text is malformed, or holds no item of the kind expected.
    #[error(
        "no valid PEM {what} found{from}: {source}; expected `-----BEGIN ...-----` blocks \
         (a certificate chain: CERTIFICATE blocks; a key: PRIVATE KEY, RSA PRIVATE KEY or \
         EC PRIVATE KEY)"
    )]
    Pem {
        /// "certificate chain" or "private key".
        what: &'static str,
        /// ` in PATH` when read from a file, or empty.
        from: String,
        /// What the PEM parser found.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate PEM holds no `CERTIFICATE` block.
    #[error(
        "no certificate found{from}: expected at least one `-----BEGIN CERTIFICATE-----` \
         block (the server's certificate, then its issuers)"
    )]
    NoCertificate {
        /// ` in PATH` when read from a file, or empty.
        from: String,
    },
    /// rustls refused the certificate or key (a key that does not match
    /// the certificate, an unsupported key type).
    #[error(
        "rustls refused the certificate or key: {0}; check that the key belongs to the \
         first certificate of the chain"
    )]
    Config(#[source] rustls::Error),
}
