//! The durable spool: a per-core append-only log with group commit.

#![allow(dead_code)]

mod codec;
mod ledger;
mod record;
