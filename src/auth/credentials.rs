//! The credentials file: who may connect, stored as hashes, and the check of a token.
//!
//! The file is text, one credential per line, written by `flowd token add` (lines
//! starting with `#` and empty ones are skipped):
//!
//! ```text
//! NAME SP SHA256 SP GRANTS LF
//! ci 9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab produce:events,consume:events
//! ```
//!
//! - NAME: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`, unique in the file; logs and errors
//!   name a client by it.
//! - SHA256: 64 lower-case hex digits, the SHA-256 of the whole token. Tokens are 32
//!   random bytes (`flowd_` and 64 hex digits), so a plain hash suffices: there is no
//!   dictionary to try, and the file alone lets nobody in.
//! - GRANTS: comma-separated permissions (`permission.rs`).
//!
//! The file must be its owner's alone (no group or other bits): it is refused otherwise,
//! as ssh refuses a key others can read. A token is compared with every hash in
//! constant time (`subtle`), never by a map lookup that would stop at the first
//! differing byte.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::permission::Grant;

/// Longest credentials file read (a million credentials is not a use).
const FILE_BYTES_MAX: u64 = 16 << 20;
/// The prefix of every token, so that one found in a log or a repository is known.
pub const TOKEN_PREFIX: &str = "flowd_";

/// Who a client proved to be, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone)]
struct Entry {
    hash: [u8; 32],
    identity: Arc<Identity>,
}

/// Every credential of a file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the credentials file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the credentials file {path} is mode {mode:04o}: other users may read it; make it its owner's alone: chmod 600 {path}"
    )]
    Open { path: PathBuf, mode: u32 },
    #[error("{path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Credentials {
    /// Reads and checks `path`: its mode, every line.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let read = |source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        let mode = meta.permissions().mode() & 0o7777;
        if !crate::storage::io::secret_closed(&meta) {
            return Err(CredentialsError::Open {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        file.take(FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .map_err(read)?;
        Credentials::parse(&text).map_err(|(line, message)| CredentialsError::Line {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// The credentials in `text`, or the first bad line (1-based) and what is wrong.
    pub fn parse(text: &str) -> Result<Credentials, (usize, String)> {
        let mut entries: Vec<Entry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |m: String| (n + 1, m);
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hash), Some(grants), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(fail("a line is NAME SHA256 GRANTS, separated by spaces".into()));
            };
            check_name(name).map_err(fail)?;
            let hash = parse_hash(hash).ok_or_else(|| fail("the hash is not 64 hex digits".into()))?;
            let grants = Grant::parse_list(grants).map_err(fail)?;
            if entries.iter().any(|e| e.identity.name == name) {
                return Err(fail(format!("\"{name}\" is named twice")));
            }
            entries.push(Entry {
                hash,
                identity: Arc::new(Identity {
                    name: name.to_owned(),
                    grants,
                }),
            });
        }
        Ok(Credentials { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identities, in the file's order.
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.entries.iter().map(|e| &*e.identity)
    }

    /// Who `token` belongs to: its hash compared with every credential's in constant
    /// time.
    pub fn check(&self, token: &str) -> Option<Arc<Identity>> {
        let hash = hash(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(Arc::clone(&entry.identity));
            }
        }
        found
    }

    /// The credential named `name`: whom a client certificate with that common name,
    /// verified against the doors' client CA, proves.
    pub fn named(&self, name: &str) -> Option<Arc<Identity>> {
        self.entries
            .iter()
            .find(|e| e.identity.name == name)
            .map(|e| Arc::clone(&e.identity))
    }

    /// Adds a credential named `name` to the file at `path` (made, mode 0600, when
    /// missing) and returns its token, which is stored nowhere else: shown once.
    pub fn add(path: &Path, name: &str, grants: &[Grant]) -> Result<String, CredentialsError> {
        check_name(name).map_err(CredentialsError::Invalid)?;
        let text = existing(path)?;
        let current = Credentials::parse(&text).map_err(|(line, message)| CredentialsError::Line {
            path: path.to_path_buf(),
            line,
            message,
        })?;
        if current.identities().any(|i| i.name == name) {
            return Err(CredentialsError::Invalid(format!(
                "{} already holds \"{name}\": `flowd token remove {name}` first, or choose another name",
                path.display()
            )));
        }
        let token = new_token().map_err(|source| CredentialsError::Read {
            path: "/dev/urandom".into(),
            source,
        })?;
        let grants: Vec<String> = grants.iter().map(Grant::to_string).collect();
        let mut text = if text.is_empty() {
            "# flowd credentials: NAME SHA256(token) PERMISSIONS, one per line (flowd token add)\n".to_owned()
        } else {
            text
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{name} {} {}\n", hex(&hash(&token)), grants.join(",")));
        write_private(path, &text)?;
        Ok(token)
    }

    /// Removes the credential `name`; whether it was there.
    pub fn remove(path: &Path, name: &str) -> Result<bool, CredentialsError> {
        let text = existing(path)?;
        let mut removed = false;
        let kept: String = text
            .lines()
            .filter(|line| {
                let this =
                    line.split_whitespace().next() == Some(name) && !line.trim_start().starts_with('#');
                removed |= this;
                !this
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if removed {
            write_private(path, &kept)?;
        }
        Ok(removed)
    }
}

/// The file's text, empty when there is none yet; refused when others may read it.
fn existing(path: &Path) -> Result<String, CredentialsError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(_) => {}
    }
    Credentials::load(path)?;
    std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path` through a new file of mode 0600 renamed over it.
fn write_private(path: &Path, text: &str) -> Result<(), CredentialsError> {
    use std::io::Write;
    let fail = |source| CredentialsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a credential name: 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'"
        ))
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `flowd_` and 32 bytes from the kernel's random source, in hex.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_added_are_found_by_their_hash_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        let ci = Credentials::add(&path, "ci", &Grant::parse_list("produce:events").unwrap()).unwrap();
        let ops = Credentials::add(&path, "ops", &[Grant::Admin]).unwrap();
        assert!(ci.starts_with(TOKEN_PREFIX) && ci.len() == TOKEN_PREFIX.len() + 64);
        assert_ne!(ci, ops);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&ci[TOKEN_PREFIX.len()..]),
            "the token itself is stored: {text}"
        );
        let loaded = Credentials::load(&path).unwrap();
        assert_eq!(loaded.check(&ci).unwrap().name, "ci");
        assert_eq!(loaded.check(&ops).unwrap().grants, vec![Grant::Admin]);
        assert!(loaded.check("flowd_0000").is_none());
        assert!(loaded.check(&format!("{ci}x")).is_none());
        assert!(
            Credentials::add(&path, "ci", &[Grant::Admin]).is_err(),
            "a name twice"
        );
        assert!(Credentials::remove(&path, "ci").unwrap());
        assert!(!Credentials::remove(&path, "ci").unwrap());
        let loaded = Credentials::load(&path).unwrap();
        assert!(loaded.check(&ci).is_none());
        assert!(loaded.check(&ops).is_some());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Credentials::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn bad_lines_are_named() {
        let good = format!("# c\n\nci {} admin\n", "ab".repeat(32));
        assert_eq!(Credentials::parse(&good).unwrap().identities().count(), 1);
        for (text, line) in [
            (format!("ci {} admin extra", "ab".repeat(32)), 1),
            (format!("# x\nci {} admin", "ab".repeat(31)), 2),
            (format!("c i {} admin", "ab".repeat(32)), 1),
            (format!("ci {} write:x", "ab".repeat(32)), 1),
            (format!("ci {h} admin\nci {h} admin", h = "ab".repeat(32)), 2),
        ] {
            assert_eq!(Credentials::parse(&text).unwrap_err().0, line, "{text}");
        }
    }
}
