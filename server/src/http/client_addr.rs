//! The address a request is counted under (enrollment limits), and the trusted-proxy rule.
//!
//! Without trusted proxies ([`ServerConfig::trusted_proxies`](super::ServerConfig) empty) it is
//! the TCP peer's address, and `X-Forwarded-For` is ignored: any client can write that header. A
//! request whose peer is a trusted proxy is counted under the right-most `X-Forwarded-For` entry
//! that is not itself a trusted proxy: each proxy appends the address its connection came from,
//! so that entry is the one a proxy we trust wrote about a peer we do not; entries left of it were
//! written by the client and are not believed. If that entry cannot be read, the request is
//! counted under the peer (the proxy), never under an address of the sender's choosing. At most
//! [`MAX_FORWARDED_HOPS`] entries are examined. IPv6 clients are counted per /64 (one
//! subscriber's prefix), so that rotating addresses inside it gains nothing.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::{IpNet, Ipv6Net};

/// Most `X-Forwarded-For` entries examined, from the right.
pub const MAX_FORWARDED_HOPS: usize = 16;

/// The client address of a request from `peer` with `headers`, under the rule above.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several header lines are one list, in order.
    let mut lines = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(line) => lines.push(line),
            // An unreadable line: nothing right of the peer can be believed.
            Err(_) => return peer,
        }
    }
    let mut nearest = peer;
    let entries = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .take(MAX_FORWARDED_HOPS);
    for entry in entries {
        let Some(ip) = parse_entry(entry) else {
            return nearest;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest = ip;
    }
    // Every entry examined is a trusted proxy: the request started at one of them.
    nearest
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

/// The key a client address is counted under: the address for IPv4, its /64 for IPv6.
pub fn source_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => Ipv6Net::new(v6, 64)
            .map(|net| net.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
    }
}

/// Parses a `--trusted-proxy` value: an address (`10.0.0.5`, `::1`) or a network
/// (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_trusted_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_trusted() {
        let xff = headers(&["198.51.100.7"]);
        assert_eq!(client_ip(ip("203.0.113.1"), &xff, &[]), ip("203.0.113.1"));
        let trusted = [parse_trusted_proxy("10.0.0.0/8").unwrap()];
        assert_eq!(
            client_ip(ip("203.0.113.1"), &xff, &trusted),
            ip("203.0.113.1")
        );
        assert_eq!(
            client_ip(ip("10.1.2.3"), &xff, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let trusted = [
            parse_trusted_proxy("10.0.0.5").unwrap(),
            parse_trusted_proxy("fd00::/8").unwrap(),
        ];
        // The client wrote the first two entries itself; the proxies appended the rest.
        let xff = headers(&["1.1.1.1, 2.2.2.2", "198.51.100.7, fd00::1"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &xff, &trusted),
            ip("198.51.100.7")
        );
        // With a port, in brackets, IPv4-mapped.
        for entry in [
            "198.51.100.7:4711",
            "::ffff:198.51.100.7",
            " \"198.51.100.7\" ",
        ] {
            assert_eq!(
                client_ip(ip("10.0.0.5"), &headers(&[entry]), &trusted),
                ip("198.51.100.7"),
                "{entry}"
            );
        }
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
        // Unreadable where the client should be: the nearest trusted hop, not a chosen address.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&["1.1.1.1, garbage"]), &trusted),
            ip("10.0.0.5")
        );
        // No header, or only trusted hops.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&["fd00::9"]), &trusted),
            ip("fd00::9")
        );
        // Entries past the examined bound are never reached.
        let many = vec!["10.0.0.5"; MAX_FORWARDED_HOPS + 1].join(",");
        let xff = headers(&[&format!("198.51.100.7,{many}")]);
        assert_eq!(client_ip(ip("10.0.0.5"), &xff, &trusted), ip("10.0.0.5"));
    }

    #[test]
    fn ipv6_clients_count_per_slash_64() {
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(
            source_key(ip("2001:db8:1:2:bbbb::9")),
            source_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_eq!(source_key(ip("::ffff:192.0.2.4")), "192.0.2.4");
        assert_eq!(source_key(ip("192.0.2.4")), "192.0.2.4");
    }

    #[test]
    fn trusted_proxies_parse_as_addresses_or_networks() {
        assert_eq!(
            parse_trusted_proxy("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_trusted_proxy("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(parse_trusted_proxy("::1").unwrap().to_string(), "::1/128");
        assert!(parse_trusted_proxy("proxy.local").is_err());
        assert!(parse_trusted_proxy("10.0.0.0/33").is_err());
    }
}
