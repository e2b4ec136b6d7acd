//! Egress: SecMX discovery, the SMTP client, DSNs, local Maildir delivery and the per-core shard
//! that owns each destination domain's queue.

pub mod discovery;
