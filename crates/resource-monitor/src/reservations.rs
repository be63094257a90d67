//! Reservations of GPU memory, CPU threads and RAM for agent instances, each a lease that
//! expires unless renewed — so a holder that dies frees its share after its TTL. Capacity is
//! the configured limit (`resources.*_limit`) or, without one, the host's physical amount.
//! All-or-nothing: a request is granted whole or refused naming the resource short.
//!
//! The ledger lives in the monitor's memory: it describes this host only, and a restarted
//! monitor starts empty, which holders see as `NOT_FOUND` on their next renewal (reserve again).
//! Pure: time comes in as arguments.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use tta_proto::v1 as pb;
use tta_types::{AgentId, Priority};

/// What the host can give: totals and per-GPU memory (by device index).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity {
    pub cpu_threads: u32,
    pub ram_bytes: u64,
    pub gpu_memory: Vec<(u32, u64)>,
}

impl Capacity {
    fn gpu(&self, index: u32) -> Option<u64> {
        self.gpu_memory
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, bytes)| *bytes)
    }
}

/// A validated reservation request.
#[derive(Debug, Clone)]
pub struct Request {
    pub agent: AgentId,
    pub gpu_memory_bytes: u64,
    pub cpu_threads: u32,
    pub ram_bytes: u64,
    pub gpu_index: Option<u32>,
    pub ttl: Duration,
    pub priority: Priority,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone)]
struct Lease {
    agent: AgentId,
    gpu_memory_bytes: u64,
    cpu_threads: u32,
    ram_bytes: u64,
    gpu_index: Option<u32>,
    ttl: Duration,
    priority: Priority,
    created_at: SystemTime,
    expires_at: SystemTime,
    idempotency_key: Option<String>,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no GPU is visible on this host (NVML unavailable or no devices)")]
    NoGpu,
    #[error("gpu_index: no GPU {0} on this host")]
    NoSuchGpu(u32),
    #[error("{resource}: {requested} requested, {available} of {capacity} available")]
    Short {
        resource: &'static str,
        requested: u64,
        available: u64,
        capacity: u64,
        /// The earliest lease expiry that would free enough, if any.
        retry_after: Option<Duration>,
    },
    #[error("host is critical: only HIGH priority reservations are granted")]
    HostCritical,
}

/// The amounts reserved on this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub gpu_memory_bytes: u64,
    pub cpu_threads: u32,
    pub ram_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Ledger {
    leases: HashMap<String, Lease>,
}

impl Ledger {
    /// Drops expired leases; returns how many.
    pub fn expire(&mut self, now: SystemTime) -> usize {
        let before = self.leases.len();
        self.leases.retain(|_, lease| lease.expires_at > now);
        before - self.leases.len()
    }

    fn reserved_on_gpu(&self, index: u32) -> u64 {
        self.leases
            .values()
            .filter(|lease| lease.gpu_index == Some(index))
            .map(|lease| lease.gpu_memory_bytes)
            .sum()
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for lease in self.leases.values() {
            totals.gpu_memory_bytes += lease.gpu_memory_bytes;
            totals.cpu_threads += lease.cpu_threads;
            totals.ram_bytes += lease.ram_bytes;
        }
        totals
    }

    /// GPU memory reserved per device index.
    pub fn gpu_reserved(&self, index: u32) -> u64 {
        self.reserved_on_gpu(index)
    }

    /// The earliest time after which leases expiring by then free `needed` of a resource.
    fn wait_for(
        &self,
        now: SystemTime,
        needed: u64,
        amount: impl Fn(&Lease) -> u64,
    ) -> Option<Duration> {
        let mut expiries: Vec<(SystemTime, u64)> = self
            .leases
            .values()
            .map(|lease| (lease.expires_at, amount(lease)))
            .filter(|(_, freed)| *freed > 0)
            .collect();
        expiries.sort_by_key(|(at, _)| *at);
        let mut freed = 0;
        for (at, amount) in expiries {
            freed += amount;
            if freed >= needed {
                return Some(at.duration_since(now).unwrap_or_default());
            }
        }
        None
    }

    /// Grants `request` whole or refuses it. `critical` is the host's health now: a critical host
    /// grants only HIGH priority.
    pub fn reserve(
        &mut self,
        request: Request,
        capacity: &Capacity,
        critical: bool,
        now: SystemTime,
    ) -> Result<pb::Reservation, Refusal> {
        self.expire(now);
        if let Some(key) = &request.idempotency_key
            && let Some((id, lease)) = self
                .leases
                .iter()
                .find(|(_, lease)| lease.idempotency_key.as_ref() == Some(key))
        {
            return Ok(self.to_proto(id, lease, ""));
        }
        if critical && request.priority != Priority::High {
            return Err(Refusal::HostCritical);
        }
        let gpu_index = if request.gpu_memory_bytes > 0 {
            if capacity.gpu_memory.is_empty() {
                return Err(Refusal::NoGpu);
            }
            let index = match request.gpu_index {
                Some(index) => {
                    capacity.gpu(index).ok_or(Refusal::NoSuchGpu(index))?;
                    index
                }
                // The device with the most free unreserved memory.
                None => capacity
                    .gpu_memory
                    .iter()
                    .max_by_key(|(index, bytes)| bytes.saturating_sub(self.reserved_on_gpu(*index)))
                    .map(|(index, _)| *index)
                    .ok_or(Refusal::NoGpu)?,
            };
            let total = capacity.gpu(index).unwrap_or(0);
            let available = total.saturating_sub(self.reserved_on_gpu(index));
            if request.gpu_memory_bytes > available {
                return Err(Refusal::Short {
                    resource: "gpu_memory_bytes",
                    requested: request.gpu_memory_bytes,
                    available,
                    capacity: total,
                    retry_after: self.wait_for(
                        now,
                        request.gpu_memory_bytes - available,
                        |lease| {
                            if lease.gpu_index == Some(index) {
                                lease.gpu_memory_bytes
                            } else {
                                0
                            }
                        },
                    ),
                });
            }
            Some(index)
        } else {
            None
        };
        let totals = self.totals();
        let cpu_available = u64::from(capacity.cpu_threads.saturating_sub(totals.cpu_threads));
        if u64::from(request.cpu_threads) > cpu_available {
            return Err(Refusal::Short {
                resource: "cpu_threads",
                requested: u64::from(request.cpu_threads),
                available: cpu_available,
                capacity: u64::from(capacity.cpu_threads),
                retry_after: self.wait_for(
                    now,
                    u64::from(request.cpu_threads) - cpu_available,
                    |lease| u64::from(lease.cpu_threads),
                ),
            });
        }
        let ram_available = capacity.ram_bytes.saturating_sub(totals.ram_bytes);
        if request.ram_bytes > ram_available {
            return Err(Refusal::Short {
                resource: "ram_bytes",
                requested: request.ram_bytes,
                available: ram_available,
                capacity: capacity.ram_bytes,
                retry_after: self.wait_for(now, request.ram_bytes - ram_available, |lease| {
                    lease.ram_bytes
                }),
            });
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let lease = Lease {
            agent: request.agent,
            gpu_memory_bytes: request.gpu_memory_bytes,
            cpu_threads: request.cpu_threads,
            ram_bytes: request.ram_bytes,
            gpu_index,
            ttl: request.ttl,
            priority: request.priority,
            created_at: now,
            expires_at: now + request.ttl,
            idempotency_key: request.idempotency_key,
        };
        let reservation = self.to_proto(&id, &lease, "");
        self.leases.insert(id, lease);
        Ok(reservation)
    }

    /// True when the lease was live.
    pub fn release(&mut self, lease_id: &str, now: SystemTime) -> bool {
        self.expire(now);
        self.leases.remove(lease_id).is_some()
    }

    /// Extends a live lease by `ttl` (or its original TTL) from now.
    pub fn renew(
        &mut self,
        lease_id: &str,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Option<pb::Reservation> {
        self.expire(now);
        let lease = self.leases.get_mut(lease_id)?;
        if let Some(ttl) = ttl {
            lease.ttl = ttl;
        }
        lease.expires_at = now + lease.ttl;
        let lease = lease.clone();
        Some(self.to_proto(lease_id, &lease, ""))
    }

    /// Live leases, soonest expiry first, optionally of one agent type.
    pub fn list(&mut self, agent_type: Option<&str>, now: SystemTime) -> Vec<pb::Reservation> {
        self.expire(now);
        let mut leases: Vec<(&String, &Lease)> = self
            .leases
            .iter()
            .filter(|(_, lease)| agent_type.is_none_or(|t| lease.agent.agent_type.as_str() == t))
            .collect();
        leases.sort_by_key(|(_, lease)| lease.expires_at);
        leases
            .into_iter()
            .map(|(id, lease)| self.to_proto(id, lease, ""))
            .collect()
    }

    fn to_proto(&self, id: &str, lease: &Lease, host: &str) -> pb::Reservation {
        pb::Reservation {
            lease_id: id.to_owned(),
            agent: Some(pb::AgentId::from(&lease.agent)),
            amounts: Some(pb::ResourceAmounts {
                gpu_memory_bytes: lease.gpu_memory_bytes,
                cpu_threads: lease.cpu_threads,
                ram_bytes: lease.ram_bytes,
            }),
            gpu_index: lease.gpu_index,
            host: host.to_owned(),
            priority: pb::Priority::from(lease.priority) as i32,
            created_at: Some(prost_types::Timestamp::from(lease.created_at)),
            expires_at: Some(prost_types::Timestamp::from(lease.expires_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tta_types::AgentType;

    fn request(gpu: u64, threads: u32, ttl: Duration) -> Request {
        Request {
            agent: AgentId::new(AgentType::Nga, "nga-1".to_owned()).unwrap(),
            gpu_memory_bytes: gpu,
            cpu_threads: threads,
            ram_bytes: 0,
            gpu_index: None,
            ttl,
            priority: Priority::Normal,
            idempotency_key: None,
        }
    }

    fn capacity() -> Capacity {
        Capacity {
            cpu_threads: 8,
            ram_bytes: 1 << 30,
            gpu_memory: vec![(0, 1000), (1, 2000)],
        }
    }

    #[test]
    fn grants_on_the_freest_gpu_and_refuses_beyond_the_limit() {
        let mut ledger = Ledger::default();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(60);
        let first = ledger
            .reserve(request(1500, 2, ttl), &capacity(), false, now)
            .unwrap();
        assert_eq!(first.gpu_index, Some(1));
        let refused = ledger
            .reserve(request(1200, 0, ttl), &capacity(), false, now)
            .unwrap_err();
        assert!(matches!(
            refused,
            Refusal::Short {
                resource: "gpu_memory_bytes",
                available: 1000,
                ..
            }
        ));
        let refused = ledger
            .reserve(request(0, 7, ttl), &capacity(), false, now)
            .unwrap_err();
        assert!(
            matches!(refused, Refusal::Short { resource: "cpu_threads", retry_after: Some(wait), .. } if wait == ttl)
        );
        // Nothing of a refused request was kept.
        assert_eq!(ledger.totals().cpu_threads, 2);
    }

    #[test]
    fn an_expired_lease_frees_its_share() {
        let mut ledger = Ledger::default();
        let now = SystemTime::now();
        let lease = ledger
            .reserve(
                request(1000, 8, Duration::from_secs(1)),
                &capacity(),
                false,
                now,
            )
            .unwrap();
        assert!(
            ledger
                .reserve(
                    request(0, 1, Duration::from_secs(1)),
                    &capacity(),
                    false,
                    now
                )
                .is_err()
        );
        let later = now + Duration::from_secs(2);
        assert!(ledger.renew(&lease.lease_id, None, later).is_none());
        assert_eq!(ledger.totals(), Totals::default());
        assert!(
            ledger
                .reserve(
                    request(0, 8, Duration::from_secs(1)),
                    &capacity(),
                    false,
                    later
                )
                .is_ok()
        );
    }

    #[test]
    fn renewal_keeps_a_lease_alive_and_release_frees_it() {
        let mut ledger = Ledger::default();
        let now = SystemTime::now();
        let lease = ledger
            .reserve(
                request(0, 4, Duration::from_secs(10)),
                &capacity(),
                false,
                now,
            )
            .unwrap();
        let renewed = ledger
            .renew(&lease.lease_id, None, now + Duration::from_secs(8))
            .unwrap();
        assert!(renewed.expires_at.unwrap().seconds > lease.expires_at.unwrap().seconds);
        assert_eq!(ledger.list(None, now + Duration::from_secs(15)).len(), 1);
        assert!(ledger.release(&lease.lease_id, now + Duration::from_secs(15)));
        assert!(!ledger.release(&lease.lease_id, now + Duration::from_secs(15)));
    }

    #[test]
    fn a_critical_host_grants_only_high_priority_and_keys_are_idempotent() {
        let mut ledger = Ledger::default();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(
            ledger.reserve(request(0, 1, ttl), &capacity(), true, now),
            Err(Refusal::HostCritical)
        );
        let mut high = request(0, 1, ttl);
        high.priority = Priority::High;
        high.idempotency_key = Some("k1".into());
        let first = ledger
            .reserve(high.clone(), &capacity(), true, now)
            .unwrap();
        let again = ledger.reserve(high, &capacity(), true, now).unwrap();
        assert_eq!(first.lease_id, again.lease_id);
        assert_eq!(ledger.totals().cpu_threads, 1);
    }

    #[test]
    fn gpu_memory_needs_a_gpu() {
        let mut ledger = Ledger::default();
        let cpu_only = Capacity {
            gpu_memory: Vec::new(),
            ..capacity()
        };
        assert_eq!(
            ledger.reserve(
                request(1, 0, Duration::from_secs(1)),
                &cpu_only,
                false,
                SystemTime::now()
            ),
            Err(Refusal::NoGpu)
        );
    }
}
