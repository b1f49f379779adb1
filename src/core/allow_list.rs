//! Which addresses a replica may register with: an allow-list of networks (CIDR) and DNS
//! suffixes. The scheduler sends queries to every registered address, so an open list would let
//! anyone point it at any host and port of the cluster's network.
//!
//! An address is `host:port`; an IP host must lie in one of the networks, a name must equal one
//! of the suffixes or end with `.` + one (case-insensitive, a trailing dot ignored). Names are
//! not resolved: a suffix trusts the DNS zone it names.

use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<IpNet>,
    suffixes: Vec<String>,
}

impl AllowList {
    /// Loopback only: `127.0.0.0/8`, `::1`, `localhost`.
    pub fn loopback() -> Self {
        Self::parse(["127.0.0.0/8", "::1/128", "localhost"]).expect("valid loopback entries")
    }

    /// From entries such as `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`, `l2d.svc.cluster.local`.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut list = Self {
            networks: Vec::new(),
            suffixes: Vec::new(),
        };
        for entry in entries {
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                list.networks.push(net.trunc());
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                list.networks.push(IpNet::from(ip));
            } else {
                let suffix = entry.trim_matches('.').to_ascii_lowercase();
                let valid = !suffix.is_empty()
                    && suffix.len() <= 253
                    && suffix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !valid || suffix.parse::<IpAddr>().is_ok() || entry.contains('/') {
                    return Err(format!(
                        "{entry:?} is neither a network (CIDR), an IP address nor a DNS suffix"
                    ));
                }
                list.suffixes.push(suffix);
            }
        }
        Ok(list)
    }

    /// May a replica register at `host:port`?
    pub fn allows(&self, address: &str) -> bool {
        let Some((host, _port)) = address.rsplit_once(':') else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            return self.networks.iter().any(|n| n.contains(&ip));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.suffixes.iter().any(|s| {
            host == *s
                || (host.len() > s.len() && host.ends_with(s.as_str()) && {
                    host.as_bytes()[host.len() - s.len() - 1] == b'.'
                })
        })
    }
}

impl std::fmt::Display for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<String> = self
            .networks
            .iter()
            .map(ToString::to_string)
            .chain(self.suffixes.iter().cloned())
            .collect();
        f.write_str(&entries.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_suffixes_admit_only_what_they_name() {
        let list = AllowList::parse(["10.8.0.0/16", "fd00::/8", "l2d.svc.cluster.local"]).unwrap();
        for ok in [
            "10.8.3.4:50051",
            "[fd00::7]:1",
            "expert-bert.l2d.svc.cluster.local:50051",
            "L2D.svc.cluster.local.:9",
            "[::ffff:10.8.0.1]:2",
        ] {
            assert!(list.allows(ok), "{ok}");
        }
        for refused in [
            "10.9.0.1:50051",
            "127.0.0.1:50051",
            "[::1]:1",
            "evil-l2d.svc.cluster.local:1",
            "l2d.svc.cluster.local.evil.com:1",
            "kube-dns.kube-system.svc.cluster.local:53",
            "10.8.3.4",
        ] {
            assert!(!list.allows(refused), "{refused}");
        }
        let local = AllowList::loopback();
        assert!(local.allows("127.0.0.1:4") && local.allows("[::1]:4"));
        assert!(local.allows("localhost:4") && !local.allows("10.0.0.1:4"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in ["10.0.0.0/33", "", "a b", "exa_mple.com", "1.2.3.4/x"] {
            assert!(AllowList::parse([bad]).is_err(), "{bad:?}");
        }
    }
}
