//! secmx: a SecMX mail transfer agent on a thread-per-core io_uring engine.
//!
//! The protocol logic (SMTP parsing, SecMX policy, SRV ordering, DSN composition, DNS caching)
//! lives in plain types and functions; only `runtime`, the servers and the transports touch
//! glommio, sockets and files.

pub mod cli;
pub mod config;
pub mod date;
pub mod dns;
pub mod egress;
pub mod envelope;
pub mod runtime;
pub mod smtp;
pub mod spool;
pub mod tls;
