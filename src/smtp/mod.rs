//! SMTP ingress (RFC 5321, RFC 3207): replies, command parser, DATA decoder, session state
//! machine and the listener loop.

pub mod data;
pub mod parser;
pub mod policy;
pub mod received;
pub mod reply;
pub mod server;
pub mod session;
