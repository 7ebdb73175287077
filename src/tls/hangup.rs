//! SIGHUP reads certificates and keys again: a renewed certificate is presented from
//! the next handshake on, no connection is dropped, and one that does not read or fit
//! is refused in the log while the old one stays. The doors and the peer port each
//! start one (every registration of the signal hears it).

use std::sync::Arc;

use signal_hook::consts::SIGHUP;
use signal_hook::iterator::{Handle, Signals};

use super::TlsError;

/// What SIGHUP reloads.
pub trait Reload: Send + Sync + 'static {
    /// What it is, for the log ("the doors' certificate /etc/flowd/server.pem").
    fn what(&self) -> String;
    fn reload(&self) -> Result<(), TlsError>;
}

/// The thread that waits for SIGHUP (blocked on a pipe: no CPU while it waits); stopped
/// when dropped.
pub struct Hangup {
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hangup {
    pub fn start(tls: Arc<dyn Reload>) -> std::io::Result<Hangup> {
        let mut signals = Signals::new([SIGHUP])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("flowd-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    let what = tls.what();
                    match tls.reload() {
                        Ok(()) => tracing::info!(
                            "SIGHUP: {what} and its key were read again; new connections get them"
                        ),
                        Err(error) => tracing::error!(
                            %error,
                            "SIGHUP: {what} was not reloaded; the one read before stays"
                        ),
                    }
                }
            })?;
        Ok(Hangup {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for Hangup {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Reload for super::ServerTls {
    fn what(&self) -> String {
        format!("the doors' TLS certificate {}", self.files().cert.display())
    }

    fn reload(&self) -> Result<(), TlsError> {
        super::ServerTls::reload(self)
    }
}

impl Reload for super::peer::PeerTls {
    fn what(&self) -> String {
        format!("the peer port's TLS certificate {}", self.files().cert.display())
    }

    fn reload(&self) -> Result<(), TlsError> {
        super::peer::PeerTls::reload(self)
    }
}
