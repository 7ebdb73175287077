//! flowd: a single-binary, shared-nothing stream and job processing engine.
//!
//! Today the crate holds the storage core (`storage`) and the command line (`cli`);
//! see ARCHITECTURE.md for the codemap and the invariants.

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod consumer;
pub mod exec;
pub mod ops;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod storage;
