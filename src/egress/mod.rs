//! Egress: SecMX discovery, the SMTP client, DSNs, local Maildir delivery and the per-core shard
//! that owns each destination domain's queue.

pub mod client;
pub mod delivery;
pub mod discovery;
pub mod dsn;
pub mod maildir;
pub mod shard;
