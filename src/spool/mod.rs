//! The durable spool: a per-core append-only log with group commit.
