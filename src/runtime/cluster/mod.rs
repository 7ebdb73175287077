//! The engine's side of the cluster: how this peer's shards work with the others.
//! (`crate::cluster` below it is membership, the wire and rendezvous placement.)
//!
//! Codemap: `peers` (the links to the other peers: batches and fetches for partitions
//! they own, in send order, acked by the owner) → `ownership` (this peer's standing on
//! each partition: serving, claiming, fenced) → `handover` (how a partition moves: the
//! new owner claims it, the others fence it and say where their copies end, the longest
//! copy is copied in, then it is served) → `reroute` (batches caught by a move, sent
//! again to whoever owns the partition then) → `answers` (jobs' answers for callers on
//! other peers) → `service` (what this peer answers the others: their batches, fetches,
//! claims, copies and answers).
//!
//! The shard reaches the wing through `Shared::peers` (a `Peers`) and `Ownership`; the
//! data plane of `crate::cluster` reaches it through `service::PeerService`.

pub mod answers;
pub mod controller;
pub mod copy_pace;
pub mod damage;
pub mod follower;
pub mod handover;
pub mod leader;
pub mod ownership;
pub mod peers;
pub mod replica;
pub mod reroute;
pub mod service;
