//! SIGHUP reads the doors' TLS certificate and key again: a renewed certificate is
//! presented from the next handshake on, no connection is dropped, and a pair that does
//! not read or fit is refused in the log while the old one stays.

use std::sync::Arc;

use signal_hook::consts::SIGHUP;
use signal_hook::iterator::{Handle, Signals};

use crate::tls::ServerTls;

/// The thread that waits for SIGHUP (blocked on a pipe: no CPU while it waits); stopped
/// when dropped.
pub struct Hangup {
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hangup {
    pub fn start(tls: Arc<ServerTls>) -> std::io::Result<Hangup> {
        let mut signals = Signals::new([SIGHUP])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("flowd-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    let files = tls.files();
                    match tls.reload() {
                        Ok(()) => tracing::info!(
                            cert = %files.cert.display(),
                            "SIGHUP: the TLS certificate and key were read again; new connections get them"
                        ),
                        Err(error) => tracing::error!(
                            %error,
                            "SIGHUP: the TLS certificate was not reloaded; the one read before stays"
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
