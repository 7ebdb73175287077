//! `Records`: a zero-copy iterator over a range of a partition log.
//!
//! It walks frame headers through the mapped segments and hands out views borrowed from
//! them. No frame is checked again here: each was validated once, when its segment was
//! recovered or when this process wrote it, so the read path is pointer arithmetic.

use crate::storage::format::SEGMENT_HEADER_BYTES;
use crate::storage::record::RecordView;
use crate::storage::segment::Segment;

pub struct Records<'a> {
    segments: &'a [Segment],
    segment: usize,
    position: usize,
    until_offset: u64,
}

impl<'a> Records<'a> {
    pub(crate) fn new(
        segments: &'a [Segment],
        segment: usize,
        position: usize,
        until_offset: u64,
    ) -> Records<'a> {
        Records {
            segments,
            segment,
            position,
            until_offset,
        }
    }

    pub(crate) fn empty() -> Records<'a> {
        Records::new(&[], 0, 0, 0)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordView<'a>;

    #[inline]
    fn next(&mut self) -> Option<RecordView<'a>> {
        loop {
            let segment = self.segments.get(self.segment)?;
            if (self.position as u64) < segment.data_end() {
                let (view, next_position) = segment.view_at(self.position);
                if view.offset() >= self.until_offset {
                    self.segments = &[];
                    return None;
                }
                self.position = next_position;
                return Some(view);
            }
            self.segment += 1;
            self.position = SEGMENT_HEADER_BYTES as usize;
        }
    }
}
