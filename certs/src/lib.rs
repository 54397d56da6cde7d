//! Certificate lifecycle: generate a CA and serving certificate, decide when a self-managed
//! certificate rotates ([`lifecycle`]), and serve TLS from a certificate that may be replaced at
//! any time (files the kubelet swaps by a Secret's `..data` symlink, cert-manager renewals, or a
//! self-managed Secret).

pub mod authority;
pub mod lifecycle;

pub use authority::{Authority, Issued, Usage, key_pair};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring::{default_provider, sign::any_supported_type};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no usable PEM private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building TLS config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// A CA and a serving certificate it signed, all PEM.
pub struct GeneratedCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A throwaway CA and a serving certificate for `names` (DNS names or IP addresses), for local
/// clusters, tests and the demo. Installs use self-managed certificates ([`lifecycle`]) or
/// cert-manager.
pub fn generate(names: &[String]) -> Result<GeneratedCerts, CertError> {
    let ca = Authority::new("jellyfin-ha CA")?;
    let common_name = names.first().map_or("jellyfin-ha", String::as_str);
    let served = ca.issue(common_name, None, Usage::Server(names))?;
    Ok(GeneratedCerts {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: served.cert_pem,
        key_pem: served.key_pem,
    })
}

/// Parses a PEM chain and key into what rustls serves.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &Path,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: origin.to_path_buf(),
        });
    }
    let bad_key = |message: String| CertError::BadKey {
        path: origin.to_path_buf(),
        message,
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad_key(e.to_string()))?;
    let signing_key = any_supported_type(&key).map_err(|e| bad_key(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// The certificate every TLS server of the process presents, swapped atomically: a
/// handshake gets whichever was stored last.
#[derive(Debug)]
pub struct ServedCert(ArcSwap<CertifiedKey>);

impl ServedCert {
    pub fn new(certified: CertifiedKey) -> Arc<Self> {
        Arc::new(Self(ArcSwap::from_pointee(certified)))
    }

    pub fn store(&self, certified: CertifiedKey) {
        self.0.store(Arc::new(certified));
    }

    /// The leaf certificate now served (DER).
    pub fn leaf_der(&self) -> Vec<u8> {
        self.0
            .load()
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// A rustls server config serving the current certificate: TLS 1.2 and 1.3 only, ALPN h2
    /// and http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, CertError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A serving certificate read from two files and re-read on demand.
pub struct CertFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
    served: Arc<ServedCert>,
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl CertFiles {
    /// Loads both files; fails if either is missing or unusable.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, CertError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let (cert, key) = (read(&cert_path)?, read(&key_path)?);
        let certified = certified_key(&cert, &key, &cert_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            loaded: std::sync::Mutex::new((cert, key)),
            served: ServedCert::new(certified),
        }))
    }

    /// Re-reads the files (following symlinks, so a swapped `..data` link is seen) and swaps
    /// in the new certificate if the bytes changed. Returns whether it changed. On error the
    /// previous certificate keeps being served.
    pub fn reload(&self) -> Result<bool, CertError> {
        let (cert, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.0 == cert && loaded.1 == key {
            return Ok(false);
        }
        let certified = certified_key(&cert, &key, &self.cert_path)?;
        self.served.store(certified);
        *loaded = (cert, key);
        Ok(true)
    }

    /// What the servers present.
    pub fn served(&self) -> &Arc<ServedCert> {
        &self.served
    }

    /// The certificate file's PEM as last loaded.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// A rustls server config serving the files' current certificate.
    pub fn server_config(&self) -> Result<ServerConfig, CertError> {
        self.served.server_config()
    }
}

/// A client config that trusts only `ca_pem`, for tests, benchmarks and local tools.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).filter_map(Result::ok) {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[derive(Debug)]
struct Resolver(Arc<ServedCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.0.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, certs: &GeneratedCerts) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &certs.cert_pem).unwrap();
        std::fs::write(&key, &certs.key_pem).unwrap();
        (cert, key)
    }

    fn served_der(files: &CertFiles) -> Vec<u8> {
        files.served().leaf_der()
    }

    #[test]
    fn reload_swaps_only_when_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &generate(&["localhost".into()]).unwrap());
        let files = CertFiles::load(&cert, &key).unwrap();
        let first = served_der(&files);
        assert!(!files.reload().unwrap());

        write(dir.path(), &generate(&["localhost".into()]).unwrap());
        assert!(files.reload().unwrap());
        assert_ne!(served_der(&files), first);
    }

    #[test]
    fn broken_files_keep_the_previous_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &generate(&["localhost".into()]).unwrap());
        let files = CertFiles::load(&cert, &key).unwrap();
        let before = served_der(&files);
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(
            files.reload(),
            Err(CertError::NoCertificate { .. })
        ));
        assert_eq!(served_der(&files), before);
    }

    /// The kubelet's update of a mounted Secret: the files are links through `..data`, which is
    /// renamed over to point at a new timestamped directory, and the old one is removed; the
    /// links themselves never change.
    #[test]
    fn a_swapped_data_link_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        let version = |name: &str| {
            let versioned = mount.join(name);
            std::fs::create_dir(&versioned).unwrap();
            write(&versioned, &generate(&["localhost".into()]).unwrap());
            let link = mount.join("..data_tmp");
            std::os::unix::fs::symlink(name, &link).unwrap();
            std::fs::rename(&link, mount.join("..data")).unwrap();
        };
        version("..2026_11_25_20_00_00.1");
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), mount.join(file)).unwrap();
        }
        let files = CertFiles::load(mount.join("tls.crt"), mount.join("tls.key")).unwrap();
        let first = served_der(&files);

        version("..2026_11_25_20_05_00.2");
        std::fs::remove_dir_all(mount.join("..2026_11_25_20_00_00.1")).unwrap();
        assert!(files.reload().unwrap());
        assert_ne!(served_der(&files), first);
        assert!(!files.reload().unwrap());
    }

    #[test]
    fn missing_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write(dir.path(), &generate(&["localhost".into()]).unwrap());
        let err = CertFiles::load(&cert, dir.path().join("absent.key")).unwrap_err();
        assert!(err.to_string().contains("absent.key"), "{err}");
    }
}
