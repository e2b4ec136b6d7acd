//! The `nameserver` lines of `/etc/resolv.conf` (resolv.conf(5)): the upstream servers used
//! when the configuration names none.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use tracing::warn;

/// resolv.conf(5): "Up to MAXNS (currently 3) name servers may be listed"; later ones are
/// ignored by the C library, and here too.
const MAX_NAMESERVERS: usize = 3;

/// The servers named by `nameserver` lines in `text`, on port 53, in file order, at most three.
///
/// Comment lines (`#` or `;` first) and other keywords are skipped; so is an address that does
/// not parse, and an IPv6 zone given by interface name rather than number.
pub fn nameservers_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let address = words.next()?;
            let parsed = parse_address(address);
            if parsed.is_none() {
                warn!(
                    address,
                    file = "/etc/resolv.conf",
                    "ignoring unusable nameserver"
                );
            }
            parsed
        })
        .take(MAX_NAMESERVERS)
        .collect()
}

fn parse_address(text: &str) -> Option<SocketAddr> {
    match text.split_once('%') {
        None => Some(SocketAddr::new(text.parse::<IpAddr>().ok()?, 53)),
        Some((ip, zone)) => {
            let scope_id = zone.parse::<u32>().ok()?;
            Some(SocketAddrV6::new(ip.parse().ok()?, 53, 0, scope_id).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_give_port_53_servers_in_file_order() {
        let text = "# generated\n\
                    search example.net\n\
                    nameserver 127.0.0.53\n\
                    ; nameserver 10.0.0.1\n\
                    options edns0 trust-ad\n\
                    nameserver\t::1  # local\n";
        assert_eq!(
            nameservers_from_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn at_most_three_servers_are_used() {
        let text = "nameserver 127.0.0.1\nnameserver 127.0.0.2\n\
                    nameserver 127.0.0.3\nnameserver 127.0.0.4\n";
        assert_eq!(nameservers_from_resolv_conf(text).len(), 3);
    }

    #[test]
    fn unusable_addresses_are_skipped() {
        let text = "nameserver localhost\nnameserver fe80::1%eth0\nnameserver fe80::1%2\n\
                    nameserver\nnameservers 127.0.0.9\n";
        assert_eq!(
            nameservers_from_resolv_conf(text),
            vec![SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                53,
                0,
                2
            ))]
        );
    }

    #[test]
    fn empty_file_names_no_server() {
        assert!(nameservers_from_resolv_conf("").is_empty());
    }
}
