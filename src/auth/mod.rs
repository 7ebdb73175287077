//! Who may use the doors: credentials (tokens, stored hashed) and what each may do.
//! Sans-io but for reading and writing the credentials file; no other flowd room.
//!
//! Codemap: `permission` (what a token allows, and what a request needs) →
//! `credentials` (the file, byte by byte; tokens made, checked in constant time).

pub mod credentials;
pub mod permission;

pub use credentials::{Credentials, CredentialsError, Identity};
pub use permission::{Grant, Need};
