//! The console's logins: a browser that gave a token once is known by a session id in
//! a cookie, since a page cannot send `Authorization: Bearer` as it navigates.
//!
//! A session holds the token it was opened with, in memory only (never written, never
//! logged), and each request through it checks that token against the credentials in
//! force: a token removed from the file ends its sessions at once. The table is bounded
//! (`SESSIONS_MAX`, the longest unused goes first), a session ends after `IDLE` unused
//! or `LIFETIME` in all, and a restart ends them all. Ids are 32 bytes from the kernel's
//! random source; the table keeps their SHA-256, so neither a look at its memory nor the
//! time a lookup takes tells an id.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Sessions at once, at most; one more ends the longest unused.
pub const SESSIONS_MAX: usize = 1024;
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);
/// A session ends this long after it was opened, used or not.
pub const LIFETIME: Duration = Duration::from_secs(24 * 3600);

struct Session {
    token: String,
    opened: Instant,
    used: Instant,
}

#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({})", self.len())
    }
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `token` (already checked by the caller): its id, 64 hex
    /// digits. Fails only when the kernel's random source cannot be read.
    pub fn open(&self, token: &str, now: Instant) -> std::io::Result<String> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut table = self.lock();
        table.retain(|_, s| live(s, now));
        while table.len() >= SESSIONS_MAX {
            let oldest = table
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| *k)
                .expect("a full table has a session");
            table.remove(&oldest);
        }
        table.insert(
            key(&id),
            Session {
                token: token.to_owned(),
                opened: now,
                used: now,
            },
        );
        Ok(id)
    }

    /// The token of session `id`, if it is open (its use noted); an ended one is removed.
    pub fn token(&self, id: &str, now: Instant) -> Option<String> {
        let mut table = self.lock();
        let k = key(id);
        let session = table.get_mut(&k)?;
        if !live(session, now) {
            table.remove(&k);
            return None;
        }
        session.used = now;
        Some(session.token.clone())
    }

    /// Ends session `id`; whether it was open.
    pub fn close(&self, id: &str) -> bool {
        self.lock().remove(&key(id)).is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn live(session: &Session, now: Instant) -> bool {
    now.saturating_duration_since(session.used) < IDLE
        && now.saturating_duration_since(session.opened) < LIFETIME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gives_its_token_until_closed_idle_or_too_old() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let id = sessions.open("tok", t0).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.token(&id, t0).as_deref(), Some("tok"));
        assert_eq!(sessions.token("0".repeat(64).as_str(), t0), None);
        // Used now and then, it lives until its lifetime ends.
        let mut at = t0;
        while at + IDLE / 2 < t0 + LIFETIME {
            at += IDLE / 2;
            assert_eq!(sessions.token(&id, at).as_deref(), Some("tok"), "{:?}", at - t0);
        }
        assert_eq!(sessions.token(&id, t0 + LIFETIME), None);
        assert!(sessions.is_empty(), "an ended session is removed");
        // Unused for IDLE, it ends.
        let id = sessions.open("tok", t0).unwrap();
        assert_eq!(sessions.token(&id, t0 + IDLE), None);
        let id = sessions.open("tok", t0).unwrap();
        assert!(sessions.close(&id));
        assert_eq!(sessions.token(&id, t0), None);
        assert!(!sessions.close(&id));
    }

    #[test]
    fn the_table_keeps_at_most_its_bound_and_lets_the_longest_unused_go() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let first = sessions.open("first", t0).unwrap();
        let second = sessions.open("second", t0 + Duration::from_secs(1)).unwrap();
        // The first used again: the second is now the longest unused.
        assert!(sessions.token(&first, t0 + Duration::from_secs(2)).is_some());
        for i in 0..SESSIONS_MAX - 1 {
            sessions
                .open("more", t0 + Duration::from_secs(3 + i as u64))
                .unwrap();
        }
        assert_eq!(sessions.len(), SESSIONS_MAX);
        assert_eq!(sessions.token(&second, t0 + Duration::from_secs(5000)), None);
        assert!(sessions.token(&first, t0 + Duration::from_secs(5000)).is_some());
    }
}
