//! The caching stub resolver: hickory-proto for the wire format, transport and cache our own.
