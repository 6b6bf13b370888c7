//! TLS, and optionally mTLS, on the ext_proc gRPC listener: the config file's `tls:` section and
//! loading its PEM files into tonic's [`ServerTlsConfig`].
//!
//! ```yaml
//! tls:
//!   cert: /etc/flowgate/tls.crt   # PEM certificate chain, the server's own certificate first
//!   key: /etc/flowgate/tls.key    # PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate
//!   client_ca: ""                 # PEM CA bundle; when set, clients must present a certificate
//!                                 # it signed (mTLS). Empty or absent = no client certificates.
//! ```
//!
//! Relative paths are relative to the working directory. The files are read (at most
//! [`MAX_PEM_BYTES`] each) and checked completely when the configuration is validated, so
//! `check-config` reports a missing file, a file that is not PEM, a key that does not belong to
//! the certificate or a CA bundle that cannot verify anything, each as a `tls.FIELD: reason`
//! error. They are read again when `serve` starts; a later change to them needs a restart.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowgate_engine::config::ConfigError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use serde::Deserialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Most bytes read from any one PEM file (certificate chain, key or CA bundle).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Longest a client may take to complete its TLS handshake; a slower one is disconnected, so a
/// connection that never finishes its handshake does not hold server resources forever.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tls:` section, validated for shape only (the files are read by [`TlsConfig::load`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM private key of the server's certificate.
    pub key: PathBuf,
    /// PEM CA bundle client certificates must chain to; `None` = clients are not authenticated.
    pub client_ca: Option<PathBuf>,
}

/// The `tls:` section as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    client_ca: Option<PathBuf>,
}

impl From<RawTls> for TlsConfig {
    fn from(raw: RawTls) -> TlsConfig {
        TlsConfig {
            cert: raw.cert,
            key: raw.key,
            // `client_ca: ""` is the documented way to say "no mTLS".
            client_ca: raw.client_ca.filter(|p| !p.as_os_str().is_empty()),
        }
    }
}

/// The PEM files of a [`TlsConfig`], read and checked.
pub struct LoadedTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("LoadedTls").field("mtls", &self.client_ca.is_some()).finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Whether clients must present a certificate.
    pub fn mtls(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Every problem with the files (empty = they would serve); reads them.
    pub fn validate(&self) -> Vec<ConfigError> {
        self.load().err().unwrap_or_default()
    }

    /// Read and check the PEM files: the chain parses, the key parses and belongs to the chain's
    /// first certificate, the CA bundle holds usable trust anchors. Errors name the field.
    pub fn load(&self) -> Result<LoadedTls, Vec<ConfigError>> {
        let provider = rustls::crypto::ring::default_provider();
        let mut errors = Vec::new();
        let chain = read_pem("tls.cert", &self.cert).and_then(|bytes| {
            let certs = certificates("tls.cert", &self.cert, &bytes)?;
            Ok((bytes, certs))
        });
        let key = read_pem("tls.key", &self.key).and_then(|bytes| {
            let der = private_key(&self.key, &bytes)?;
            Ok((bytes, der))
        });
        let client_ca = self.client_ca.as_deref().map(|path| {
            let bytes = read_pem("tls.client_ca", path)?;
            let certs = certificates("tls.client_ca", path, &bytes)?;
            client_verifier(path, certs, &provider)?;
            Ok(bytes)
        });
        let client_ca = match client_ca.transpose() {
            Ok(ca) => ca,
            Err(e) => {
                errors.push(e);
                None
            }
        };
        match (chain, key) {
            (Ok((cert, chain)), Ok((key, der))) => {
                if let Err(e) = key_matches(&self.key, &self.cert, chain, der, &provider) {
                    errors.push(e);
                }
                if errors.is_empty() {
                    return Ok(LoadedTls { cert, key, client_ca });
                }
            }
            (chain, key) => errors.extend(chain.err().into_iter().chain(key.err())),
        }
        errors.sort_by_key(|e| field_order(&e.path));
        Err(errors)
    }
}

impl LoadedTls {
    /// Whether clients must present a certificate.
    pub fn mtls(&self) -> bool {
        self.client_ca.is_some()
    }

    /// tonic's server TLS configuration: this identity, the client CA when set (client
    /// certificates then required), HTTP/2 by ALPN, [`TLS_HANDSHAKE_TIMEOUT`].
    pub fn server_config(&self) -> ServerTlsConfig {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        match &self.client_ca {
            Some(ca) => tls.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(false),
            None => tls,
        }
    }
}

/// Make ring rustls' process-wide crypto provider (tonic builds its acceptor with the process
/// default). Harmless when one is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Errors in the file's field order: cert, key, client_ca.
fn field_order(path: &str) -> usize {
    ["tls.cert", "tls.key", "tls.client_ca"].iter().position(|p| *p == path).unwrap_or(usize::MAX)
}

fn error(field: &str, reason: String) -> ConfigError {
    ConfigError { path: field.into(), reason }
}

/// Read a whole regular file of at most [`MAX_PEM_BYTES`].
fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(error(field, "empty path".into()));
    }
    let cannot = |e: std::io::Error| error(field, format!("cannot read {shown}: {e}"));
    // Refuse a FIFO or a device before opening it: opening a FIFO would block.
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(error(field, format!("{shown} is not a regular file")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(error(field, format!("{shown} is larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file; at least one.
fn certificates(field: &str, path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| error(field, format!("{shown}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error(field, format!("{shown}: not a PEM certificate file (no CERTIFICATE block)")));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let shown = path.display();
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound => format!("{shown}: not a PEM private key (no PRIVATE KEY block)"),
            e => format!("{shown}: not a PEM private key: {e}"),
        };
        error("tls.key", reason)
    })
}

/// The client-certificate verifier the CA bundle makes (the one rustls will build at start).
fn client_verifier(
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
    provider: &CryptoProvider,
) -> Result<(), ConfigError> {
    let shown = path.display();
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            error("tls.client_ca", format!("{shown}: certificate {i} is not a usable CA: {e}"))
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider.clone()))
        .build()
        .map(drop)
        .map_err(|e| error("tls.client_ca", format!("{shown}: {e}")))
}

/// The key is one rustls can sign with, and it is the key of the chain's first certificate.
fn key_matches(
    key_path: &Path,
    cert_path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<(), ConfigError> {
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| error("tls.key", format!("{}: unsupported private key: {e}", key_path.display())))?;
    match CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(error(
            "tls.key",
            format!(
                "{} is not the key of the first certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
        )),
        Err(e) => Err(error("tls.cert", format!("{}: {e}", cert_path.display()))),
    }
}
