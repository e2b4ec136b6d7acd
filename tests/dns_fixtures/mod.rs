//! Shared pieces of the DNS integration tests: a real unbound, scripted responders, the case
//! zone files and a glommio executor to run the resolver on.
#![allow(dead_code)]

pub mod responder;
pub mod unbound;
pub mod zone;

use std::net::SocketAddr;
use std::time::Duration;

/// Runs `future` to completion on a fresh single-threaded glommio executor.
pub fn run<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor")
        .run(future)
}

/// A `[dns]` section pointing at `nameservers` only.
pub fn dns_config(
    nameservers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
) -> secmx::config::Dns {
    secmx::config::Dns {
        nameservers,
        timeout,
        attempts,
        min_ttl: Duration::ZERO,
        max_ttl: Duration::from_secs(86_400),
        negative_max_ttl: Duration::from_secs(3600),
    }
}
