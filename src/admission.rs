//! Admission of connections before their caller has proven it may be here: a cap per source
//! address on connections that have not yet made an authorized request.
//!
//! Anything that reaches the node's address can open connections before it authenticates. Without
//! a cap per source, one address holding silent or slow connections takes every
//! `--max-connections` slot (and the memory of every unfinished request head) from the scrapers
//! and the API server. A connection leaves its source's count once a request on it was allowed
//! (by its certificate or its token, not anonymously), or when it closes. Authentication alone is
//! not enough: every pod has a service-account token and every node a client certificate from
//! the cluster's CA. A connection over the cap is closed at once, before its TLS handshake costs
//! anything.
//!
//! IPv4-mapped IPv6 addresses count as their IPv4 address. Must not: keep anything but counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The unproven connections of every source, and the cap.
pub struct Unproven {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its source until it is proven or closed.
pub struct Ticket {
    table: Arc<Unproven>,
    source: IpAddr,
    counted: AtomicBool,
}

impl Unproven {
    /// A table allowing `limit` unproven connections per source address.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `source`; `None` when that source is at the cap.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Ticket> {
        let source = source.to_canonical();
        let mut counts = self.lock();
        let count = counts.entry(source).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Ticket {
            table: Arc::clone(self),
            source,
            counted: AtomicBool::new(true),
        })
    }

    /// How many unproven connections `source` holds.
    pub fn held(&self, source: IpAddr) -> usize {
        self.lock()
            .get(&source.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, source: IpAddr) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&source);
            }
        }
    }
}

impl Ticket {
    /// A request on the connection was allowed: it no longer counts against its source.
    pub fn prove(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.table.release(self.source);
        }
    }

    /// Whether a request on the connection was allowed.
    pub fn is_proven(&self) -> bool {
        !self.counted.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("source", &self.source)
            .field("proven", &self.is_proven())
            .finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.prove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_capped_until_its_connections_prove_themselves_or_close() {
        let table = Unproven::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let first = table.admit(a).unwrap();
        let second = table.admit(a).unwrap();
        assert!(table.admit(a).is_none(), "over the cap");
        assert!(table.admit(b).is_some(), "another source is not affected");
        first.prove();
        assert!(first.is_proven());
        let third = table.admit(a).unwrap();
        drop(second);
        drop(first);
        assert_eq!(table.held(a), 1);
        drop(third);
        assert_eq!(table.held(a), 0);
        assert!(
            table.lock().is_empty(),
            "no entry is kept for a source without connections"
        );
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let table = Unproven::new(1);
        let _held = table.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert!(table.admit("10.0.0.1".parse().unwrap()).is_none());
    }
}
