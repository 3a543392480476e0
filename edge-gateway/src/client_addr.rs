//! The client's address behind proxies. `X-Forwarded-For` and `Forwarded` are believed only
//! when the socket peer is a proxy the operator trusts, the way nginx's `real_ip` (with
//! `real_ip_recursive`) and Envoy's `xff_num_trusted_hops` do; from anyone else they change
//! nothing, so a client cannot pick its own rate-limit bucket.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
#[error("invalid trusted proxy {0:?}: expected an address or a CIDR such as 10.0.0.0/8")]
pub struct BadProxy(String);

/// Which peers' forwarding headers are believed, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Proxies by address: a peer in one of them is a proxy, and so is every address in the
    /// forwarded chain that falls in one of them.
    pub cidrs: Vec<IpNet>,
    /// Proxies by count: the client is the `hops`-th address from the right of the chain.
    /// With no `cidrs`, every peer is taken to be the nearest of those proxies.
    pub hops: usize,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDRs.
    pub fn parse_cidrs(list: &str) -> Result<Vec<IpNet>, BadProxy> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadProxy(s.to_string()))
            })
            .collect()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.cidrs.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = canonical(peer.ip());
        let peer_is_proxy = if self.cidrs.is_empty() {
            self.hops > 0
        } else {
            self.trusts(peer_ip)
        };
        if !peer_is_proxy {
            return peer_ip;
        }
        let Some(chain) = forwarded_chain(headers) else {
            return peer_ip;
        };
        if self.hops > 0 {
            // The proxies we trust appended the last `hops` entries; anything left of those
            // came from the client and may be forged.
            return match chain.len().checked_sub(self.hops) {
                Some(i) => chain[i],
                None => peer_ip,
            };
        }
        chain
            .iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(chain.first())
            .copied()
            .unwrap_or(peer_ip)
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of IPv4 peers) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses the request passed through, client first: from every `X-Forwarded-For`
/// header in order, or else from `Forwarded`'s `for=` parameters. `None` when there is no such
/// header or any entry is not an address (an obfuscated or forged chain is not believed).
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    let entries: Vec<String> = if !xff.is_empty() {
        xff.iter()
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .collect()
    } else {
        let forwarded: Vec<&str> = headers
            .get_all(http::header::FORWARDED)
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<_>>()?;
        forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| v.trim().trim_matches('"').to_string())
                })
            })
            .collect()
    };
    if entries.is_empty() {
        return None;
    }
    entries.iter().map(|e| parse_node(e)).collect()
}

/// An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sock) = node.parse::<SocketAddr>() {
        return Some(canonical(sock.ip()));
    }
    node.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .and_then(|n| n.parse::<IpAddr>().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn cidrs(list: &str) -> TrustedProxies {
        TrustedProxies {
            cidrs: TrustedProxies::parse_cidrs(list).unwrap(),
            hops: 0,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn with_no_trusted_proxy_the_headers_change_nothing() {
        let t = TrustedProxies::default();
        let h = headers(&[("x-forwarded-for", "9.9.9.9"), ("forwarded", "for=8.8.8.8")]);
        assert_eq!(t.client_ip(peer("203.0.113.7"), &h), ip("203.0.113.7"));
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let t = cidrs("10.0.0.0/8");
        let h = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(t.client_ip(peer("203.0.113.7"), &h), ip("203.0.113.7"));
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_walked_from_the_right_past_trusted_hops() {
        let t = cidrs("10.0.0.0/8, 127.0.0.1");
        // The client forged 1.1.1.1; the ingress appended the real client, then an internal
        // proxy appended itself.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.4, 10.1.2.3")]);
        assert_eq!(t.client_ip(peer("127.0.0.1"), &h), ip("198.51.100.4"));
    }

    #[test]
    fn several_headers_form_one_chain() {
        let t = cidrs("10.0.0.0/8");
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.4, 10.0.0.9"),
        ]);
        assert_eq!(t.client_ip(peer("10.0.0.1"), &h), ip("198.51.100.4"));
    }

    #[test]
    fn a_chain_of_only_trusted_addresses_gives_its_first() {
        let t = cidrs("10.0.0.0/8");
        let h = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]);
        assert_eq!(t.client_ip(peer("10.0.0.1"), &h), ip("10.0.0.5"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let t = cidrs("10.0.0.0/8");
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https, for=\"[2001:db8::17]:4711\", for=10.0.0.3",
        )]);
        assert_eq!(t.client_ip(peer("10.0.0.1"), &h), ip("2001:db8::17"));
    }

    #[test]
    fn a_chain_with_garbage_is_not_believed() {
        let t = cidrs("10.0.0.0/8");
        let h = headers(&[("x-forwarded-for", "198.51.100.4, not-an-ip")]);
        assert_eq!(t.client_ip(peer("10.0.0.1"), &h), ip("10.0.0.1"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(t.client_ip(peer("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn hop_counting_takes_the_nth_address_from_the_right() {
        let one = TrustedProxies {
            cidrs: Vec::new(),
            hops: 1,
        };
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4")]);
        assert_eq!(one.client_ip(peer("127.0.0.6"), &h), ip("198.51.100.4"));
        let two = TrustedProxies {
            cidrs: Vec::new(),
            hops: 2,
        };
        assert_eq!(two.client_ip(peer("127.0.0.6"), &h), ip("6.6.6.6"));
        let short = headers(&[("x-forwarded-for", "198.51.100.4")]);
        assert_eq!(
            two.client_ip(peer("127.0.0.6"), &short),
            ip("127.0.0.6"),
            "too few hops: the peer"
        );
    }

    #[test]
    fn hop_counting_with_cidrs_applies_only_to_trusted_peers() {
        let t = TrustedProxies {
            cidrs: TrustedProxies::parse_cidrs("10.0.0.0/8").unwrap(),
            hops: 1,
        };
        let h = headers(&[("x-forwarded-for", "198.51.100.4")]);
        assert_eq!(t.client_ip(peer("10.0.0.1"), &h), ip("198.51.100.4"));
        assert_eq!(t.client_ip(peer("203.0.113.7"), &h), ip("203.0.113.7"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_cidrs() {
        let t = cidrs("127.0.0.0/8");
        let h = headers(&[("x-forwarded-for", "198.51.100.4")]);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(t.client_ip(mapped, &h), ip("198.51.100.4"));
    }

    #[test]
    fn bad_proxy_lists_are_refused() {
        assert!(TrustedProxies::parse_cidrs("10.0.0.0/8, nonsense").is_err());
        assert_eq!(TrustedProxies::parse_cidrs(" ").unwrap(), vec![]);
    }
}
