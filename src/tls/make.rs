//! Certificates for flowd's doors and peers (`flowd cert`): a CA of the operator's own,
//! and certificates it signs, each good for serving and for being a client (a peer is
//! both). Keys are ECDSA P-256; PEM text out, files written by the caller.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use rustls_pki_types::pem::PemObject;

use super::TlsError;

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Made {
    pub cert_pem: String,
    pub key_pem: String,
}

fn failed(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Config(format!("cannot make {what}: {e}"))
}

/// A CA named `name`, valid for `days` from yesterday (clocks drift): its certificate
/// and key, and the same as a signer for `issue`.
pub fn authority(name: &str, days: u32) -> Result<(Made, KeyPair), TlsError> {
    let key = KeyPair::generate().map_err(failed("a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = named(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    valid(&mut params, days);
    let cert = params.self_signed(&key).map_err(failed("the CA certificate"))?;
    let made = Made {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    Ok((made, key))
}

/// A certificate named `name` (its subject's common name: the identity a client
/// certificate proves) for `hosts` (IP addresses and DNS names, checked by whoever
/// connects), signed by the CA whose certificate and key are given as PEM. With
/// `cluster`, a peer's certificate: the cluster id is its subject's organization
/// (`tls::peer` admits only peers of its own cluster).
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    hosts: &[String],
    cluster: Option<&str>,
    days: u32,
) -> Result<Made, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| TlsError::Config(format!("the CA key is not a PEM private key: {e}")))?;
    let ca_params = CertificateParams::from_ca_cert_pem(ca_cert_pem)
        .map_err(|e| TlsError::Config(format!("the CA certificate is not a PEM certificate: {e}")))?;
    let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| TlsError::Config(format!("the CA certificate is not a PEM certificate: {e:?}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(ca_der.as_ref())
        .map_err(|e| TlsError::Config(format!("the CA certificate does not parse: {e}")))?;
    if parsed.public_key().raw != ca_key.public_key_der().as_slice() {
        return Err(TlsError::Config(
            "the CA key is not the CA certificate's: give the ca.key made with this ca.pem".to_owned(),
        ));
    }
    let ca = ca_params.self_signed(&ca_key).map_err(|e| {
        TlsError::Config(format!(
            "the CA key does not sign as the CA certificate says: {e}"
        ))
    })?;
    let key = KeyPair::generate().map_err(failed("a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = named(name);
    if let Some(cluster) = cluster {
        params.distinguished_name.push(DnType::OrganizationName, cluster);
    }
    for host in hosts {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.to_owned()
                    .try_into()
                    .map_err(|_| TlsError::Config(format!("\"{host}\" is not a host name or IP address")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    valid(&mut params, days);
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(failed("the certificate"))?;
    Ok(Made {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `text` (a PEM file) to a new file `path` of `mode` and syncs it; an existing
/// file is never written over (`AlreadyExists`).
pub fn write_new(path: &std::path::Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn named(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// From yesterday for `days` days.
fn valid(params: &mut CertificateParams, days: u32) {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The (year, month, day) of `days` since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// civil_from_days).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(59), (1970, 3, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_789), (2026, 12, 2));
    }

    #[test]
    fn an_issued_certificate_names_its_holder_and_chains_to_the_ca() {
        let (ca, _) = authority("test CA", 30).unwrap();
        let hosts = vec!["127.0.0.1".to_owned(), "peer-0.flowd".to_owned()];
        let leaf = issue(&ca.cert_pem, &ca.key_pem, "peer-0", &hosts, Some("flowd"), 30).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(super::super::common_name(&der).as_deref(), Some("peer-0"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        assert_eq!(roots.len(), 1);
        // Another CA's key cannot issue for this CA.
        let (other, _) = authority("other", 30).unwrap();
        assert!(issue(&ca.cert_pem, &other.key_pem, "x", &hosts, None, 30).is_err());
    }
}
