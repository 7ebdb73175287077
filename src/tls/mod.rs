//! TLS for every door and between peers: certificates and keys read from PEM files,
//! the server's configuration (reloaded in place on SIGHUP), the client's, and the
//! certificates `flowd cert` makes. TLS 1.3 only, with rustls and ring. No other
//! flowd room.
//!
//! Codemap: this file (PEM files, the key file's mode, what a certificate names,
//! errors) → `server` (what a listener presents, swapped on reload; client
//! certificates checked against a CA) → `client` (what a client trusts and presents) →
//! `duplex` (one session over a blocking socket, read and written by two threads) →
//! `stream` (a server's session over an async socket, opened and sealed in place) →
//! `peer` (mutual TLS between the peers of one cluster) → `hangup` (SIGHUP reloads) →
//! `make` (a CA and the certificates it signs, for `flowd cert`).

pub mod client;
pub mod duplex;
pub mod hangup;
pub mod make;
pub mod peer;
pub mod server;
pub mod stream;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use client::ClientTls;
pub use server::ServerTls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {reason}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the {what} {} holds no {expected}: give a PEM file with `-----BEGIN {expected}-----` blocks (flowd cert makes them)",
        path.display()
    )]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error(
        "the private key {} is mode {mode:04o}: other users may read it; make it its owner's alone: chmod 600 {}",
        path.display(), path.display()
    )]
    OpenKey { path: PathBuf, mode: u32 },
    #[error("the key {} does not fit the certificate {}: {reason}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
    /// A handshake that failed: the other side's certificate, or none, or no TLS.
    #[error("{0}")]
    Handshake(String),
}

/// The one crypto provider: ring, TLS 1.3's suites, AES-128-GCM first.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// Every certificate in the PEM file at `path` (a chain: the leaf first).
pub fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`, which must be its owner's alone.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what: "private key",
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !crate::storage::io::secret_closed(&meta) {
        return Err(TlsError::OpenKey {
            path: path.to_owned(),
            mode,
        });
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: path.to_owned(),
            expected: "PRIVATE KEY",
        },
        e => read(pem_reason(e)),
    })
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("not PEM as expected ({e:?})"),
    }
}

/// A store of the CA certificates in the PEM file at `path`.
pub fn roots(path: &Path, what: &'static str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, what)? {
        roots.add(cert).map_err(|e| TlsError::Read {
            what,
            path: path.to_owned(),
            reason: format!("a certificate in it is not usable as a CA: {e}"),
        })?;
    }
    Ok(roots)
}

/// The subject's common name of the DER certificate `cert`: who a client certificate
/// says it is (checked against the CA before this is asked).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    subject(cert).name
}

/// What a certificate says of its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The common name: a client's credential, a peer's name.
    pub name: Option<String>,
    /// The organization: a peer certificate's cluster id (`flowd cert issue --cluster`).
    pub organization: Option<String>,
    /// The IP addresses among its subject alternative names.
    pub ips: Vec<std::net::IpAddr>,
    /// The host names among them (a pattern such as `*.flowd.svc` as written).
    pub hosts: Vec<String>,
}

/// What the DER certificate `cert` says of its holder (checked against a CA before
/// this is asked); an empty subject if it does not parse.
pub fn subject(cert: &CertificateDer<'_>) -> Subject {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Subject::default();
    };
    let text = |attr: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attr.and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let (mut ips, mut hosts) = (Vec::new(), Vec::new());
    if let Ok(Some(names)) = parsed.subject_alternative_name() {
        for name in &names.value.general_names {
            use x509_parser::extensions::GeneralName;
            match name {
                GeneralName::DNSName(host) => hosts.push((*host).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => ips.push(std::net::IpAddr::from(
                        <[u8; 4]>::try_from(*bytes).expect("4 bytes"),
                    )),
                    16 => ips.push(std::net::IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).expect("16 bytes"),
                    )),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Subject {
        name: text(parsed.subject().iter_common_name().next()),
        organization: text(parsed.subject().iter_organization().next()),
        ips,
        hosts,
    }
}

/// Whether `first` (the first bytes a connection sent) is the start of a TLS
/// ClientHello: a handshake record (22) of TLS 1.x, holding a client_hello (1). `None`
/// while too few bytes came to tell. Six bytes decide; the binary protocol's first frame
/// would need a length of exactly 0x??010316 bytes and a kind byte to match.
pub fn client_hello(first: &[u8]) -> Option<bool> {
    const SHAPE: [Option<u8>; 6] = [Some(0x16), Some(0x03), None, None, None, Some(0x01)];
    for (i, want) in SHAPE.iter().enumerate() {
        let &byte = first.get(i)?;
        let fits = match (i, want) {
            (2, _) => byte <= 0x04,
            (_, Some(want)) => byte == *want,
            (_, None) => true,
        };
        if !fits {
            return Some(false);
        }
    }
    Some(true)
}

/// A CA made for one test, a server's TLS for 127.0.0.1 it signed and a client's
/// trusting it, its files in `dir`. With `client_hosts` the server asks for (does not
/// require) a client certificate of the CA, and the client presents one naming them.
#[cfg(test)]
pub(crate) fn test_pair(dir: &Path, client_hosts: Option<&[String]>) -> (ServerTls, ClientTls) {
    let (ca, _) = make::authority("test", 1).unwrap();
    let leaf = make::issue(&ca.cert_pem, &ca.key_pem, "s", &["127.0.0.1".into()], None, 1).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        make::write_new(&path, text, 0o600).unwrap();
        path
    };
    let ca_path = write("ca.pem", &ca.cert_pem);
    let client =
        client_hosts.map(|hosts| make::issue(&ca.cert_pem, &ca.key_pem, "c", hosts, None, 1).unwrap());
    let server = ServerTls::load(server::ServerFiles {
        cert: write("s.pem", &leaf.cert_pem),
        key: write("s.key", &leaf.key_pem),
        client_ca: client.as_ref().map(|_| ca_path.clone()),
        required: false,
    })
    .unwrap();
    let client = ClientTls::load(&client::ClientFiles {
        ca: Some(ca_path),
        cert: client.as_ref().map(|c| write("c.pem", &c.cert_pem)),
        key: client.as_ref().map(|c| write("c.key", &c.key_pem)),
        server_name: None,
    })
    .unwrap();
    (server, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_is_told_from_a_frame_or_a_request() {
        assert_eq!(client_hello(&[]), None);
        assert_eq!(client_hello(&[0x16, 0x03, 0x01]), None);
        assert_eq!(client_hello(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Some(true));
        assert_eq!(client_hello(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x02]), Some(false));
        assert_eq!(client_hello(b"GET / HTTP/1.1"), Some(false));
        // A binary frame of 22 bytes: its length's first byte is 0x16, the next 0.
        assert_eq!(client_hello(&[0x16, 0x00, 0x00, 0x00, 0x01]), Some(false));
        assert_eq!(client_hello(&[0x16, 0x03, 0x09]), Some(false));
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let (ca, _) = make::authority("t", 30).unwrap();
        std::fs::write(&path, ca.key_pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = private_key(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        private_key(&path).unwrap();
    }
}
