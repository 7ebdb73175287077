//! `Records` and `Batches`: zero-copy iterators over a range of a partition log.
//!
//! `Records` walks the batches of the mapped segments and hands out views of their
//! records borrowed from them; `Batches` hands out the batches whole. Each batch was
//! validated once, when its segment was recovered or when this process wrote it; since a
//! disk may change bytes after they were checked, a read checks it again as it enters it
//! (`Segment::check_unit`): `Records` its CRCs, header and body, before a record of it is
//! decoded; `Batches` its header's CRC (the length and offsets it goes by), the body
//! being its reader's to check (a replica, a FETCH_BATCHES client: the protocol says so).
//! A batch that fails ends the read there: the iterator says so (`end`), the log notes
//! it (`PartitionLog::damage`, once, in the log too), and nothing of it, nor of any
//! batch after it, is handed out. Within a batch the read path is pointer arithmetic.

use std::sync::OnceLock;

use crate::storage::error::StorageError;
use crate::storage::record::{RecordView, Stored};
use crate::storage::segment::{Cursor, Segment};

/// Where a log notes the first damage any of its reads met (its message), and whom it
/// tells then (`PartitionLog::on_damage`).
#[derive(Default)]
pub struct DamageNote {
    first: OnceLock<String>,
    tell: Option<Tell>,
}

/// What a log calls with its first damage's message.
pub type Tell = Box<dyn Fn(&str) + Send + Sync>;

impl DamageNote {
    /// The first damage's message, if a read met one.
    pub fn get(&self) -> Option<&str> {
        self.first.get().map(String::as_str)
    }

    /// Has `tell` called with the message of the first damage, once.
    pub fn tell(&mut self, tell: Tell) {
        self.tell = Some(tell);
    }

    /// Takes over whom `before` (the note of the log this one replaces) tells.
    pub(crate) fn carry_on(&mut self, before: &mut DamageNote) {
        self.tell = before.tell.take();
    }
}

/// Notes `damage` in `note` if it is the first the log met, saying it in the log then
/// and telling whom the note tells.
pub(crate) fn note_damage(note: &DamageNote, damage: &StorageError) {
    let mut first = false;
    let said = note.first.get_or_init(|| {
        tracing::error!("{damage}");
        first = true;
        damage.to_string()
    });
    if first && let Some(tell) = &note.tell {
        tell(said);
    }
}

/// What a read of a range knows of where it is, and of damage it met.
struct Walk<'a> {
    segments: &'a [Segment],
    segment: usize,
    at: Cursor,
    until_offset: u64,
    /// The offset of the next record to give.
    next: u64,
    /// Whether the unit at `at.position` was checked.
    entered: bool,
    /// Whether a unit's body is checked too (`Segment::check_unit`).
    whole: bool,
    note: Option<&'a DamageNote>,
    damage: Option<StorageError>,
}

impl<'a> Walk<'a> {
    fn new(
        segments: &'a [Segment],
        segment: usize,
        at: Cursor,
        (from, until_offset): (u64, u64),
        whole: bool,
        note: &'a DamageNote,
    ) -> Walk<'a> {
        Walk {
            segments,
            segment,
            at,
            until_offset,
            next: from,
            entered: true,
            whole,
            note: Some(note),
            damage: None,
        }
    }

    fn empty() -> Walk<'a> {
        Walk {
            segments: &[],
            segment: 0,
            at: Cursor::START,
            until_offset: 0,
            next: 0,
            entered: true,
            whole: true,
            note: None,
            damage: None,
        }
    }

    /// A read that met `damage` before it began (while it looked for its start).
    fn damaged(damage: StorageError, note: &'a DamageNote) -> Walk<'a> {
        let mut walk = Walk::empty();
        walk.note = Some(note);
        walk.stop(damage);
        walk
    }

    /// The segment holding the next unit, that unit checked; `None` at the end of the
    /// range or at damage.
    #[inline]
    fn current(&mut self) -> Option<&'a Segment> {
        loop {
            let segment = self.segments.get(self.segment)?;
            if (self.at.position as u64) < segment.data_end() {
                if !self.entered {
                    if self.next >= self.until_offset {
                        self.segments = &[];
                        return None;
                    }
                    if let Err(damage) = segment.check_unit(self.at.position, self.next, self.whole) {
                        self.stop(damage);
                        return None;
                    }
                    self.entered = true;
                }
                return Some(segment);
            }
            self.segment += 1;
            self.at = Cursor::START;
            self.entered = false;
        }
    }

    /// Moves on to `next`, past the record `offset` (or past a whole unit ending there).
    #[inline]
    fn advance(&mut self, next: Cursor, offset: u64) {
        self.entered &= next.position == self.at.position;
        self.at = next;
        self.next = offset + 1;
    }

    fn stop(&mut self, damage: StorageError) {
        self.segments = &[];
        if let Some(note) = self.note {
            note_damage(note, &damage);
        }
        self.damage = Some(damage);
    }
}

pub struct Records<'a>(Walk<'a>);

impl<'a> Records<'a> {
    /// Records from `at`, a place whose unit was just checked whole (`Segment::position_of`),
    /// holding the record `from`, up to `until_offset`; damage is noted in `note`.
    pub(crate) fn new(
        segments: &'a [Segment],
        segment: usize,
        at: Cursor,
        from: u64,
        until_offset: u64,
        note: &'a DamageNote,
    ) -> Records<'a> {
        Records(Walk::new(segments, segment, at, (from, until_offset), true, note))
    }

    pub(crate) fn empty() -> Records<'a> {
        Records(Walk::empty())
    }

    /// A read that met `damage` before its first record.
    pub(crate) fn damaged(damage: StorageError, note: &'a DamageNote) -> Records<'a> {
        Records(Walk::damaged(damage, note))
    }

    /// The damage that ended this read, if one did: its records stopped before the
    /// batch that failed its check, at the offset the error names.
    pub fn damage(&self) -> Option<&StorageError> {
        self.0.damage.as_ref()
    }

    /// What ended the read: nothing (the range's end, or the reader stopped), or the
    /// damage it met.
    pub fn end(self) -> Result<(), StorageError> {
        self.0.damage.map_or(Ok(()), Err)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordView<'a>;

    #[inline]
    fn next(&mut self) -> Option<RecordView<'a>> {
        let walk = &mut self.0;
        let segment = walk.current()?;
        let (view, next) = segment.view_at(walk.at);
        if view.offset() >= walk.until_offset {
            walk.segments = &[];
            return None;
        }
        walk.advance(next, view.offset());
        Some(view)
    }
}

/// The stored batches holding a range of a partition log, whole: zero-copy slices of
/// the mapped segments, for sending on as they are.
pub struct Batches<'a>(Walk<'a>);

impl<'a> Batches<'a> {
    /// Batches from `at`, a place whose unit's header was just checked, holding the record
    /// `from`, up to `until_offset`; damage is noted in `note`.
    pub(crate) fn new(
        segments: &'a [Segment],
        segment: usize,
        at: Cursor,
        from: u64,
        until_offset: u64,
        note: &'a DamageNote,
    ) -> Batches<'a> {
        Batches(Walk::new(
            segments,
            segment,
            at,
            (from, until_offset),
            false,
            note,
        ))
    }

    pub(crate) fn empty() -> Batches<'a> {
        Batches(Walk::empty())
    }

    /// A read that met `damage` before its first batch.
    pub(crate) fn damaged(damage: StorageError, note: &'a DamageNote) -> Batches<'a> {
        Batches(Walk::damaged(damage, note))
    }

    /// What ended the read (as `Records::end`).
    pub fn end(self) -> Result<(), StorageError> {
        self.0.damage.map_or(Ok(()), Err)
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Stored<'a>;

    fn next(&mut self) -> Option<Stored<'a>> {
        let walk = &mut self.0;
        let segment = walk.current()?;
        let (stored, next) = segment.stored_at(walk.at);
        // Only whole batches: one that ends past the range is not handed out.
        let first = match stored {
            Stored::Batch { base_offset, .. } => base_offset,
            Stored::Frame(view) => view.offset(),
        };
        if first >= walk.until_offset || stored.next_offset() > walk.until_offset {
            walk.segments = &[];
            return None;
        }
        walk.advance(next, stored.next_offset() - 1);
        Some(stored)
    }
}
