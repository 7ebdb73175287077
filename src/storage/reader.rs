//! `Records`: a zero-copy iterator over a range of a partition log.
//!
//! It walks the batches of the mapped segments and hands out views of their records
//! borrowed from them. No batch is checked again here: each was validated once, when its
//! segment was recovered or when this process wrote it, so the read path is pointer
//! arithmetic.

use crate::storage::record::RecordView;
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
