//! Lets hyper drive a glommio TCP stream: hyper's own I/O traits over the futures ones
//! glommio implements.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

pub struct HyperIo<T> {
    io: T,
    /// The connection's phase, moved from idle to "head" when a request's first bytes
    /// arrive (the watchdog times the head from there).
    phase: Option<Rc<Cell<Phase>>>,
}

impl<T> HyperIo<T> {
    pub fn watched(io: T, phase: Rc<Cell<Phase>>) -> HyperIo<T> {
        HyperIo {
            io,
            phase: Some(phase),
        }
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // Safety: the bytes are initialised (zeroed) before they are handed out as
        // `&mut [u8]`, and the cursor advances only over the `n` bytes the read filled.
        let read = unsafe {
            let uninit: &mut [MaybeUninit<u8>] = buf.as_mut();
            for b in uninit.iter_mut() {
                b.write(0);
            }
            let init = &mut *(uninit as *mut [MaybeUninit<u8>] as *mut [u8]);
            match Pin::new(&mut self.io).poll_read(cx, init) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        };
        // Safety: `read` bytes were just written by the read above.
        unsafe { buf.advance(read) };
        if read > 0
            && let Some(phase) = &self.phase
            && let Phase::Idle(_) = phase.get()
        {
            phase.set(Phase::Head(Instant::now()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

/// Where an HTTP connection stands, for its watchdog.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// No request begun since this time.
    Idle(Instant),
    /// A request's first bytes came at this time; hyper reads its head.
    Head(Instant),
    /// A request is being served (its body read, its answer made).
    Serving,
}
