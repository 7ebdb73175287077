//! Writing what a queue brings to a socket, coalesced and timed: a client connection's
//! responses (`connection.rs`) and a relay's requests to a peer (`relay.rs`) both go out
//! this way.

use std::time::Duration;

use futures_lite::AsyncWriteExt;

use crate::server::api;

/// Why `write_queued` stopped.
pub(crate) enum WriteEnd {
    /// Every sender is gone and all was written.
    Done,
    Failed(std::io::Error),
    /// The other side took nothing for the whole timeout.
    TimedOut,
}

/// Writes what `queued` brings as it comes, up to 64 items coalesced into one write
/// (each item dropped once written), each write within `timeout`; closes the writer.
pub(crate) async fn write_queued<T, W: futures_lite::AsyncWrite + Unpin>(
    writer: W,
    queued: &flume::Receiver<T>,
    timeout: Duration,
    bytes: impl Fn(&T) -> &[u8],
) -> WriteEnd {
    let mut writer = futures_lite::io::BufWriter::with_capacity(64 << 10, writer);
    let mut end = WriteEnd::Done;
    while let Ok(first) = queued.recv_async().await {
        let mut batch = vec![first];
        while let Ok(more) = queued.try_recv() {
            batch.push(more);
            if batch.len() >= 64 {
                break;
            }
        }
        let written = api::within(timeout, async {
            for item in &batch {
                writer.write_all(bytes(item)).await?;
            }
            writer.flush().await
        })
        .await;
        match written {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                end = WriteEnd::Failed(error);
                break;
            }
            None => {
                end = WriteEnd::TimedOut;
                break;
            }
        }
    }
    let _ = writer.close().await;
    end
}
