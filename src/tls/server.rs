//! What a listener presents: its certificate chain and key, read from PEM files and
//! swapped in place when they are read again (SIGHUP), so that a renewed certificate
//! needs no restart and no open connection is dropped (a connection keeps the keys it
//! shook hands with). With a client CA, a client may present a certificate it signed;
//! one without a certificate is still served (it then proves itself with a token).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// The PEM files a listener's TLS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates whose signed client certificates are accepted (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With a client CA: a client must present a certificate it signed (peers); without
    /// `required` one without a certificate is served too (and must give a token). A
    /// server that requires one sends no session tickets: its clients are peers, which
    /// do not resume, and a quiet connection then carries nothing not asked for.
    pub required: bool,
}

/// A listener's TLS: the configuration handshakes use, its certificate reloadable.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerFiles,
    current: Arc<Current>,
    config: Arc<ServerConfig>,
}

/// The certificate and key presented now.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().expect("certificate lock")))
    }
}

/// A peer presents the same certificate when it connects (`tls::peer`).
impl ResolvesClientCert for Current {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().expect("certificate lock")))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ServerTls {
    /// Reads the files and builds the configuration: TLS 1.3 only.
    pub fn load(files: ServerFiles) -> Result<ServerTls, TlsError> {
        let provider = super::provider();
        let current = Arc::new(Current(RwLock::new(certified(&files.cert, &files.key)?)));
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let roots = Arc::new(super::roots(ca, "client CA")?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider));
                let verifier = if files.required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Config(format!("the client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = Vec::new();
        if files.required {
            config.send_tls13_tickets = 0;
        }
        Ok(ServerTls {
            files,
            current,
            config: Arc::new(config),
        })
    }

    /// Reads the certificate and key again and presents them from the next handshake
    /// on; on an error the old ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified(&self.files.cert, &self.files.key)?;
        *self.current.0.write().expect("certificate lock") = fresh;
        Ok(())
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// What this server presents, for a client that presents the same (a peer).
    pub(super) fn presented(&self) -> Arc<dyn ResolvesClientCert> {
        Arc::clone(&self.current) as Arc<dyn ResolvesClientCert>
    }
}

/// The chain in `cert` with the key in `key`, checked to belong together.
fn certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = super::certificates(cert, "certificate")?;
    let der = super::private_key(key)?;
    let mismatch = |reason: String| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let signing = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| mismatch(format!("the key is not usable: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| mismatch(format!("{e}: was the key made with this certificate?")))?;
    Ok(Arc::new(certified))
}
