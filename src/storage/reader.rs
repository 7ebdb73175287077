//! `Records`: a zero-copy iterator over a range of a partition log.
//!
//! It walks the batches of the mapped segments and hands out views of their records
//! borrowed from them. No batch is checked again here: each was validated once, when its
//! segment was recovered or when this process wrote it, so the read path is pointer
//! arithmetic.

use crate::storage::record::{RecordView, Stored};
use crate::storage::segment::{Cursor, Segment};

pub struct Records<'a> {
    segments: &'a [Segment],
    segment: usize,
    at: Cursor,
    until_offset: u64,
}

impl<'a> Records<'a> {
    pub(crate) fn new(segments: &'a [Segment], segment: usize, at: Cursor, until_offset: u64) -> Records<'a> {
        Records {
            segments,
            segment,
            at,
            until_offset,
        }
    }

    pub(crate) fn empty() -> Records<'a> {
        Records::new(&[], 0, Cursor::START, 0)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordView<'a>;

    #[inline]
    fn next(&mut self) -> Option<RecordView<'a>> {
        loop {
            let segment = self.segments.get(self.segment)?;
            if (self.at.position as u64) < segment.data_end() {
                let (view, next) = segment.view_at(self.at);
                if view.offset() >= self.until_offset {
                    self.segments = &[];
                    return None;
                }
                self.at = next;
                return Some(view);
            }
            self.segment += 1;
            self.at = Cursor::START;
        }
    }
}

/// The stored batches holding a range of a partition log, whole: zero-copy slices of
/// the mapped segments, for sending on as they are.
pub struct Batches<'a> {
    segments: &'a [Segment],
    segment: usize,
    at: Cursor,
    until_offset: u64,
}

impl<'a> Batches<'a> {
    pub(crate) fn new(segments: &'a [Segment], segment: usize, at: Cursor, until_offset: u64) -> Batches<'a> {
        Batches {
            segments,
            segment,
            at,
            until_offset,
        }
    }

    pub(crate) fn empty() -> Batches<'a> {
        Batches::new(&[], 0, Cursor::START, 0)
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Stored<'a>;

    fn next(&mut self) -> Option<Stored<'a>> {
        loop {
            let segment = self.segments.get(self.segment)?;
            if (self.at.position as u64) < segment.data_end() {
                let (stored, next) = segment.stored_at(self.at);
                // Only whole batches: one that ends past the range is not handed out.
                let first = match stored {
                    Stored::Batch { base_offset, .. } => base_offset,
                    Stored::Frame(view) => view.offset(),
                };
                if first >= self.until_offset || stored.next_offset() > self.until_offset {
                    self.segments = &[];
                    return None;
                }
                self.at = next;
                return Some(stored);
            }
            self.segment += 1;
            self.at = Cursor::START;
        }
    }
}
