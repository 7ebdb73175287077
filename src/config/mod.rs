//! dataflow.toml: the raw file (`raw`), its known keys (`keys`), validation into the
//! typed `DataflowSpec` (`validate`, `spec`) and errors with positions (`error`).

pub mod error;
mod keys;
pub mod raw;
pub mod spec;
pub mod validate;

pub use error::{ConfigError, Diagnostic};
pub use spec::*;
pub use validate::{load, parse};
