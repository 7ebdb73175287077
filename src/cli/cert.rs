//! `flowd cert ca|issue`: a CA of the operator's own and the certificates it signs, for
//! the doors' TLS, client certificates and (between peers) mutual TLS. Keys are written
//! mode 0600 and never over an existing file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::CliError;

#[derive(Debug, Subcommand)]
pub enum CertAction {
    /// Make a CA: DIR/ca.pem (give it to clients as --ca and to servers as
    /// tls_client_ca) and DIR/ca.key (keep it where certificates are issued).
    Ca {
        /// The directory the files go to (made if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's name, in its certificate.
        #[arg(long, default_value = "flowd CA")]
        name: String,
        /// Days the CA stays valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key, signed by DIR/ca.pem and DIR/ca.key: for a
    /// server (--host names what clients connect to), a peer (--cluster, --host its
    /// peer address), or a client whose certificate proves the credential NAME.
    Issue {
        /// The holder's name (the certificate's common name).
        name: String,
        /// The directory holding the CA, where the files go.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// IP addresses and DNS names clients reach the holder at (comma-separated); a
        /// peer's: its peer address, or the name --peer-listen and the others' --seeds
        /// give it, or a pattern such as *.NAMESPACE.svc.cluster.local.
        #[arg(long, value_name = "HOST,HOST", value_delimiter = ',')]
        host: Vec<String>,
        /// A peer's certificate for the cluster ID (its --cluster-id): peers admit only
        /// peers whose certificate names their cluster, for the address they give (or the
        /// name it was found by).
        #[arg(long, value_name = "ID")]
        cluster: Option<String>,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn run(action: CertAction) -> Result<ExitCode, CliError> {
    match action {
        CertAction::Ca { dir, name, days } => {
            make_dir(&dir)?;
            let (made, _) = crate::tls::make::authority(&name, days)?;
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
            write_new(&cert, &made.cert_pem, 0o644)?;
            write_new(&key, &made.key_pem, 0o600)?;
            println!("{}\n{}", cert.display(), key.display());
        }
        CertAction::Issue {
            name,
            dir,
            host,
            cluster,
            days,
        } => {
            let read = |path: PathBuf| {
                std::fs::read_to_string(&path).map_err(|source| CliError::Input { path, source })
            };
            let ca_cert = read(dir.join("ca.pem"))?;
            let ca_key = read(dir.join("ca.key"))?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(CliError::Usage(format!(
                    "\"{name}\" is not a name for a certificate: use A-Z a-z 0-9 . _ -"
                )));
            }
            if cluster.is_some() && host.is_empty() {
                return Err(CliError::Usage(
                    "a peer's certificate needs --host: the IP address of its --peer-listen, which the other peers check".into(),
                ));
            }
            let made = crate::tls::make::issue(&ca_cert, &ca_key, &name, &host, cluster.as_deref(), days)?;
            let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            write_new(&cert, &made.cert_pem, 0o644)?;
            write_new(&key, &made.key_pem, 0o600)?;
            println!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn make_dir(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|source| CliError::Input {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `text` to a new file `path` of `mode`; an existing file is left alone.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    crate::tls::make::write_new(path, text, mode).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => CliError::Usage(format!(
            "{} exists: flowd cert never writes over a certificate or key; move it away first",
            path.display()
        )),
        _ => CliError::Input {
            path: path.to_owned(),
            source,
        },
    })
}
