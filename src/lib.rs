//! flowd: a single-binary, shared-nothing stream and job processing engine.
//!
//! Its rooms, from the bottom up: `storage` (partition logs), `net` (how it dials), `auth` (credentials), `config`, `consumer`,
//! `protocol`, `ops`, `exec`, `metrics`, `cluster` (membership), `runtime` (the engine),
//! `server` (its front doors), `client`, `bench` and `cli`. ARCHITECTURE.md has the
//! codemap, the invariants and the imports that must never exist.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod consumer;
pub mod exec;
pub mod jq;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod tls;
