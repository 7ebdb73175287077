//! A batch's record section decompressed, never past a limit.
//!
//! Kafka clients compress a batch's records with gzip, snappy, lz4 or zstd (the batch's
//! attributes say which). A few KiB of any of them can expand to GiBs, and snappy's
//! length header can claim 4 GiB in five bytes. Each codec here stops reading once it
//! has produced `limit` bytes, and a length header over the limit is refused before
//! anything is allocated, so what one produce request makes the door hold is bounded
//! by `ingest.max_frame_bytes` whether it came compressed or not.
//!
//! The codecs are the crates kafka-protocol itself uses (flate2, snap, lz4, zstd),
//! driven here because its own decompression reads to the end whatever a batch expands
//! to (docs/decisions.md).
//!
//! Snappy comes in two forms, as Kafka's Java client reads it: raw snappy, or
//! snappy-java's framing (8 bytes `82 'S' 'N' 'A' 'P' 'P' 'Y' 00`, a version and a
//! compatible version of 4 bytes each, then blocks of a big-endian `u32` length and
//! that many bytes of raw snappy).

use std::borrow::Cow;
use std::io::Read;

use kafka_protocol::records::Compression;

/// Why a record section was not decompressed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// It expands (or claims to) past the limit.
    Over,
    /// Its bytes are not what its codec says; what the codec said.
    Corrupt(String),
}

const SNAPPY_JAVA_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const SNAPPY_JAVA_HEADER_BYTES: usize = 16;

/// `section` decompressed as `compression` says, at most `limit` bytes (`section`
/// itself when it is not compressed, whatever its length: the request holding it was
/// already bounded).
pub fn inflate(section: &[u8], compression: Compression, limit: usize) -> Result<Cow<'_, [u8]>, Failed> {
    match compression {
        Compression::None => Ok(Cow::Borrowed(section)),
        Compression::Gzip => within(flate2::read::MultiGzDecoder::new(section), limit, "gzip"),
        Compression::Lz4 => {
            let mut decoder = lz4::Decoder::new(section).map_err(|e| corrupt("lz4", &e))?;
            let out = within(&mut decoder, limit, "lz4")?;
            // Its reads end quietly where a frame is cut short; `finish` says so.
            decoder.finish().1.map_err(|e| corrupt("lz4", &e))?;
            Ok(out)
        }
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(section).map_err(|e| corrupt("zstd", &e))?;
            within(decoder, limit, "zstd")
        }
        Compression::Snappy if section.starts_with(SNAPPY_JAVA_MAGIC) => snappy_java(section, limit),
        Compression::Snappy => {
            let mut out = Vec::new();
            snappy_block(section, &mut out, limit)?;
            Ok(Cow::Owned(out))
        }
    }
}

/// What `reader` yields, if it ends within `limit` bytes.
fn within(reader: impl Read, limit: usize, codec: &str) -> Result<Cow<'static, [u8]>, Failed> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, &e))?;
    if out.len() > limit {
        return Err(Failed::Over);
    }
    Ok(Cow::Owned(out))
}

/// snappy-java's framing: its header, then blocks until the section ends.
fn snappy_java(section: &[u8], limit: usize) -> Result<Cow<'static, [u8]>, Failed> {
    let mut rest = section
        .get(SNAPPY_JAVA_HEADER_BYTES..)
        .ok_or_else(|| Failed::Corrupt("snappy: the framing's header is cut short".into()))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (length, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Failed::Corrupt("snappy: a block's length is cut short".into()))?;
        let length = u32::from_be_bytes(*length) as usize;
        let block = after.get(..length).ok_or_else(|| {
            Failed::Corrupt(format!(
                "snappy: a block of {length} bytes with {} left",
                after.len()
            ))
        })?;
        snappy_block(block, &mut out, limit)?;
        rest = &after[length..];
    }
    Ok(Cow::Owned(out))
}

/// One raw snappy block appended to `out`, if `out` stays within `limit` bytes: the
/// length it claims is checked before any room is made for it.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), Failed> {
    let length = snap::raw::decompress_len(block).map_err(|e| corrupt("snappy", &e))?;
    if length > limit.saturating_sub(out.len()) {
        return Err(Failed::Over);
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| corrupt("snappy", &e))?;
    out.truncate(start + written);
    Ok(())
}

fn corrupt(codec: &str, error: &dyn std::fmt::Display) -> Failed {
    Failed::Corrupt(format!("{codec}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

    fn compress(compression: Compression, raw: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let fill = |buf: &mut BytesMut| {
            buf.put_slice(raw);
            Ok(())
        };
        match compression {
            Compression::Gzip => Gzip::compress(&mut out, fill),
            Compression::Snappy => Snappy::compress(&mut out, fill),
            Compression::Lz4 => Lz4::compress(&mut out, fill),
            Compression::Zstd => Zstd::compress(&mut out, fill),
            Compression::None => fill(&mut out),
        }
        .unwrap();
        out.to_vec()
    }

    #[test]
    fn every_codec_reads_back_what_kafkas_codec_wrote_up_to_the_limit_and_not_a_byte_past_it() {
        let raw: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let compressed = compress(compression, &raw);
            let back = inflate(&compressed, compression, raw.len()).unwrap();
            assert_eq!(back.as_ref(), &raw[..], "{compression:?}");
            assert_eq!(
                inflate(&compressed, compression, raw.len() - 1),
                Err(Failed::Over),
                "{compression:?} one byte under"
            );
            let cut = &compressed[..compressed.len() / 2];
            assert!(
                matches!(inflate(cut, compression, raw.len()), Err(Failed::Corrupt(_))),
                "{compression:?} cut in half"
            );
        }
        // Not compressed: the section itself, whatever the limit.
        assert!(matches!(
            inflate(b"abc", Compression::None, 0),
            Ok(Cow::Borrowed(b"abc"))
        ));
    }

    #[test]
    fn a_snappy_length_over_the_limit_is_refused_before_room_is_made_for_it() {
        // Raw snappy claiming 4 GiB - 1 in five bytes, and the same as a framed block.
        let claim = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert_eq!(inflate(&claim, Compression::Snappy, 1 << 20), Err(Failed::Over));
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend_from_slice(&(claim.len() as u32).to_be_bytes());
        framed.extend_from_slice(&claim);
        assert_eq!(inflate(&framed, Compression::Snappy, 1 << 20), Err(Failed::Over));
        // Framed blocks count together against the limit.
        let block = compress(Compression::Snappy, &[7u8; 1000]);
        let mut two = block.clone();
        two.extend_from_slice(&block[SNAPPY_JAVA_HEADER_BYTES..]);
        assert_eq!(inflate(&two, Compression::Snappy, 2000).unwrap().len(), 2000);
        assert_eq!(inflate(&two, Compression::Snappy, 1999), Err(Failed::Over));
        // A block longer than what is left.
        let mut short = block.clone();
        short.truncate(short.len() - 1);
        assert!(matches!(
            inflate(&short, Compression::Snappy, 2000),
            Err(Failed::Corrupt(_))
        ));
    }
}
