//! What a client trusts (the CA it is given, else this machine's) and presents (a
//! certificate of its own, for mutual TLS), and the name it expects the server's
//! certificate to carry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::TlsError;

/// The machine's CA bundle (Debian's ca-certificates), trusted without `--ca`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client's TLS settings, shared by its connections.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// The name every server's certificate must carry, instead of the host connected to.
    server_name: Option<String>,
}

/// Where a client's TLS comes from (the CLI's `--ca`, `--client-cert`, `--client-key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// CA certificates the server's must be signed by; the machine's bundle without.
    pub ca: Option<PathBuf>,
    /// A certificate and key of this client's own.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl ClientTls {
    pub fn load(files: &ClientFiles) -> Result<ClientTls, TlsError> {
        let ca = files.ca.as_deref().unwrap_or(Path::new(SYSTEM_ROOTS));
        let roots = super::roots(
            ca,
            if files.ca.is_some() {
                "CA file"
            } else {
                "system CA bundle"
            },
        )?;
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    super::certificates(cert, "certificate")?,
                    super::private_key(key)?,
                )
                .map_err(|e| TlsError::Mismatch {
                    cert: cert.clone(),
                    key: key.clone(),
                    reason: e.to_string(),
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both --client-cert and --client-key".to_owned(),
                ));
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: files.server_name.clone(),
        })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The name the certificate of the server at `host` (a host name or an IP address,
    /// without port) must carry.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned()).map_err(|_| {
            TlsError::Config(format!(
                "\"{name}\" is not a host name or IP address to check a certificate against"
            ))
        })
    }
}
