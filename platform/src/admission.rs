//! Which connections a listener takes: at most so many at once in the process, and at most so
//! many from one client address, so neither a flood of idle sockets nor one greedy client can
//! exhaust the process's file descriptors and lock everyone else out. A connection over either
//! cap is refused at once; one admitted holds a [`Ticket`] until it closes.
//!
//! Addresses of trusted proxies (an ingress, a sidecar) are exempt from the per-address cap:
//! every client behind them arrives from their address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

/// The caps of one listener (or of several sharing them).
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Addresses the per-address cap does not apply to.
    pub exempt: Vec<IpNet>,
}

impl AdmissionLimits {
    /// Defaults sized to the process's file-descriptor limit: a quarter kept back for files,
    /// upstream connections and the store.
    pub fn for_this_process() -> Self {
        let fds = crate::fd_limit::soft_limit().unwrap_or(1024);
        Self {
            max_connections: (fds as usize * 3 / 4).clamp(64, 100_000),
            max_per_address: 256,
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Counts open connections against [`AdmissionLimits`].
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Arc<AdmissionLimits>,
    counts: Arc<Mutex<Counts>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ProcessFull,
    AddressFull,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    admission: Admission,
    address: Option<IpAddr>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits: Arc::new(limits),
            counts: Arc::default(),
        }
    }

    fn canonical(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }

    /// Admits a connection from `peer`, or says why not.
    pub fn admit(&self, peer: IpAddr) -> Result<Ticket, Refusal> {
        let peer = Self::canonical(peer);
        let capped = !self.limits.exempt.iter().any(|n| n.contains(&peer));
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.limits.max_connections {
            return Err(Refusal::ProcessFull);
        }
        if capped {
            let n = counts.by_address.entry(peer).or_default();
            if *n >= self.limits.max_per_address {
                return Err(Refusal::AddressFull);
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            address: capped.then_some(peer),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(address) = self.address
            && let Some(n) = counts.by_address.get_mut(&address)
        {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_address_and_per_process_and_frees_on_drop() {
        let a = Admission::new(AdmissionLimits {
            max_connections: 3,
            max_per_address: 2,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        });
        let one = a.admit(ip("192.0.2.1")).unwrap();
        let _two = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.1")).unwrap_err(), Refusal::AddressFull);
        let _proxy = a.admit(ip("10.1.1.1")).unwrap();
        assert_eq!(a.admit(ip("10.1.1.1")).unwrap_err(), Refusal::ProcessFull);
        drop(one);
        assert_eq!(a.open(), 2);
        let _again = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            a.admit(ip("::ffff:192.0.2.1")).unwrap_err(),
            Refusal::ProcessFull,
            "mapped addresses count as the IPv4 one"
        );
    }

    #[test]
    fn an_exempt_proxy_may_hold_many() {
        let a = Admission::new(AdmissionLimits {
            max_connections: 100,
            max_per_address: 1,
            exempt: vec!["127.0.0.1/32".parse().unwrap()],
        });
        let tickets: Vec<_> = (0..50).map(|_| a.admit(ip("127.0.0.1")).unwrap()).collect();
        assert_eq!(a.open(), 50);
        drop(tickets);
        assert_eq!(a.open(), 0);
    }
}
