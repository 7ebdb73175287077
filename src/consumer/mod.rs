//! Named consumers ("procs") of a topic: per partition a committed offset and a claimed
//! but unacked range, with ack, reclaim, reclaim timeouts, `max_reclaims` rules and
//! dead letters. `cursor` is the state machine, `journal` how it is stored; the runtime
//! (`runtime::consumers`) runs it on the shard that owns each partition.

pub mod cursor;
pub mod error;
pub mod journal;

pub use cursor::{Cursor, OnMax, Options, Position, Range, Start};
pub use error::ConsumerError;
