//! Who a client is, and whether it may make a request: the doors' side of `auth`.
//!
//! Without a credentials file (`[ingest] credentials`, `--credentials`) the gate is
//! open and every request passes (the listeners then bind loopback only, unless
//! `insecure`). With one, it is closed: a TCP client proves who it is with AUTH before
//! anything else, an HTTP request with `Authorization: Bearer TOKEN` (or the console's
//! session cookie, `http::login`), and each request
//! needs the permissions `needs` names: deny by default, even with an empty file.
//!
//! A client certificate verified against `[ingest] tls_client_ca` proves the credential
//! its common name names, without a token (a name not in the file proves nothing).
//!
//! The file is read again when it changes (its length, time or inode differ at the
//! next token checked), so a token added or removed counts without a restart for new
//! connections and HTTP requests; a TCP connection keeps the identity it proved. A
//! file that no longer reads keeps the last good one in force, and says so in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::auth::permission::check;
use crate::auth::{Credentials, CredentialsError, Identity, Need};
use crate::protocol::consumer::AdminAction;
use crate::protocol::{ErrorCode, ProtocolError, Request};

/// The gate every shard's doors share.
#[derive(Debug, Default)]
pub struct Gate {
    /// `None`: open.
    file: Option<Watched>,
    /// The console's logins (`http::login`): each holds the token it was opened with.
    pub sessions: crate::server::sessions::Sessions,
}

#[derive(Debug)]
struct Watched {
    path: PathBuf,
    loaded: Mutex<(Stamp, Arc<Credentials>)>,
}

/// What tells a changed file: (length, modified ns, inode).
type Stamp = (u64, i128, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((
        m.len(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        m.ino(),
    ))
}

impl Gate {
    /// Open when `path` is `None`; else closed, with the credentials read now (an error
    /// stops the start: a gate that cannot read its file must not open).
    pub fn new(path: Option<&Path>) -> Result<Gate, CredentialsError> {
        let Some(path) = path else {
            return Ok(Gate::default());
        };
        let before = stamp(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let credentials = Credentials::load(path)?;
        tracing::info!(
            "credentials from {}: {} ({})",
            path.display(),
            credentials.identities().count(),
            credentials
                .identities()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Gate {
            file: Some(Watched {
                path: path.to_path_buf(),
                loaded: Mutex::new((before, Arc::new(credentials))),
            }),
            sessions: Default::default(),
        })
    }

    /// Whether requests need credentials.
    pub fn closed(&self) -> bool {
        self.file.is_some()
    }

    /// Who `token` belongs to (on an open gate: nobody needs to be anyone).
    pub fn identify(&self, token: &str) -> Option<Arc<Identity>> {
        self.current()?.check(token)
    }

    /// The credential a verified client certificate's common name `name` proves.
    pub fn certified(&self, name: &str) -> Option<Arc<Identity>> {
        self.current()?.named(name)
    }

    /// The credentials in force: read again first if the file changed.
    fn current(&self) -> Option<Arc<Credentials>> {
        let file = self.file.as_ref()?;
        let credentials = {
            let mut loaded = file.loaded.lock().expect("the gate's lock");
            if let Ok(now) = stamp(&file.path)
                && now != loaded.0
            {
                match Credentials::load(&file.path) {
                    Ok(fresh) => {
                        tracing::info!(
                            "credentials changed in {}: {} now",
                            file.path.display(),
                            fresh.identities().count()
                        );
                        *loaded = (now, Arc::new(fresh));
                    }
                    Err(error) => {
                        tracing::error!("{error}; the credentials read before stay in force");
                        loaded.0 = now;
                    }
                }
            }
            Arc::clone(&loaded.1)
        };
        Some(credentials)
    }

    /// Whether `identity` may make a request needing `needs`: on an open gate always;
    /// else a `forbidden` error naming the first permission missing.
    pub fn allow(&self, identity: Option<&Identity>, needs: &[Need<'_>]) -> Result<(), ProtocolError> {
        if !self.closed() {
            return Ok(());
        }
        let Some(identity) = identity else {
            return Err(unauthenticated());
        };
        check(&identity.grants, needs).map_err(|missing| {
            ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "credential \"{}\" may not do this: it needs the permission {missing} (flowd token add NAME --allow {missing})",
                    identity.name
                ),
            )
        })
    }
}

/// The error of a closed gate's request without a known token.
pub fn unauthenticated() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unauthenticated,
        "this server asks for credentials: send AUTH with a token first (flowd ... --token, \
         or Authorization: Bearer over HTTP); `flowd token add` makes one",
    )
}

/// What `request` needs, every part of it.
pub fn needs<'a>(request: &'a Request<'a>) -> Vec<Need<'a>> {
    match request {
        Request::Produce(groups) => groups.iter().map(|g| Need::Produce(g.topic)).collect(),
        Request::ProduceBatch { topic, .. } => vec![Need::Produce(topic)],
        Request::Fetch(f) | Request::FetchBatches(f) => vec![Need::Consume(f.topic)],
        Request::Range(r) => vec![Need::Consume(r.topic)],
        Request::Length { topic, .. } => vec![Need::Consume(topic)],
        Request::Metadata | Request::Status { .. } => vec![Need::Status],
        Request::Job(j) => vec![Need::Jobs(j.job)],
        Request::State { stage, .. } => vec![Need::State(stage)],
        Request::Claim(c) => {
            let mut needs = vec![Need::Consume(c.topic), Need::Group(c.group)];
            // A consumer made to dead-letter writes copies of its records there.
            if let Some(crate::consumer::OnMax::DeadLetter(topic)) = c.create.as_ref().map(|o| &o.on_max) {
                needs.push(Need::Produce(topic));
            }
            needs
        }
        Request::Ack(r) | Request::Reclaim(r) | Request::Seek(r, _) => {
            vec![Need::Consume(r.topic), Need::Group(r.group)]
        }
        Request::AckCommit(r, groups) => [Need::Consume(r.topic), Need::Group(r.group)]
            .into_iter()
            .chain(groups.iter().map(|g| Need::Produce(g.topic)))
            .collect(),
        Request::ConsumerAdmin(a) => match a.action {
            AdminAction::List if !a.topic.is_empty() && !a.group.is_empty() => {
                vec![Need::Consume(a.topic), Need::Group(a.group)]
            }
            _ => vec![Need::Admin],
        },
        Request::Auth { .. } | Request::Vouch { .. } => Vec::new(),
    }
}
