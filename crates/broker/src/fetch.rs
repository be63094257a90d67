//! Which entries a push consumer gets next, in strict priority order (HIGH before NORMAL before
//! LOW, FIFO within each), in as few Redis round trips as the traffic allows.
//!
//! When the consumer keeps up, every stream is drained and one blocking `XREADGROUP` over all
//! three is enough: it returns as soon as anything arrives, with whatever each stream holds.
//! Only when a read comes back full — a backlog — can a lower-priority entry in hand be
//! overtaken by a higher one still in Redis; such entries are held back here (they already sit
//! in the consumer's pending list) and the next reads go stream by stream, highest first, until
//! the backlog is gone.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use redis::aio::MultiplexedConnection;
use tta_types::Priority;

use crate::{
    engine::{Delivered, Engine, Subscription, priority_index},
    error::Error,
};

#[derive(Debug)]
struct Held {
    delivered: Delivered,
    read_at: Instant,
}

/// One consumer's read state.
#[derive(Debug, Default)]
pub struct Fetcher {
    /// Entries read but not yet handed over, per priority (index 0 is HIGH); each queue is the
    /// head of its stream.
    held: [VecDeque<Held>; 3],
    /// A stream may hold more than the last read took.
    backlog: bool,
}

impl Fetcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Up to `wanted` entries in delivery order; waits up to `block` when there is nothing.
    pub async fn next(
        &mut self,
        engine: &Engine,
        subscription: &Subscription,
        connection: &mut MultiplexedConnection,
        wanted: usize,
        block: Duration,
    ) -> Result<Vec<Delivered>, Error> {
        if wanted == 0 {
            return Ok(Vec::new());
        }
        self.release_stale(Instant::now(), subscription.visibility_timeout / 2);
        if self.backlog || self.holds_any() {
            let batch = self
                .stream_by_stream(engine, subscription, connection, wanted)
                .await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
        let read = engine
            .read_streams(
                subscription,
                connection,
                &Priority::DELIVERY_ORDER,
                wanted,
                Some(block),
            )
            .await?;
        Ok(self.split_read(read, wanted, Instant::now()))
    }

    /// Keeps entries read in delivery order, that the consumer has no credit for after all
    /// (hand-offs used it while the read waited), to hand them over first next time.
    pub fn hold_back(&mut self, entries: Vec<Delivered>, now: Instant) {
        for delivered in entries.into_iter().rev() {
            let queue = &mut self.held[priority_index(delivered.receipt.priority)];
            queue.push_front(Held {
                delivered,
                read_at: now,
            });
        }
    }

    /// Every stream was drained by the last read: the next one blocks until something arrives.
    pub fn keeps_up(&self) -> bool {
        !self.backlog && !self.holds_any()
    }

    fn holds_any(&self) -> bool {
        self.held.iter().any(|queue| !queue.is_empty())
    }

    /// Held entries whose lease is half gone are dropped rather than handed out late: the
    /// reclaimer gives them to a consumer once their lease has run out.
    fn release_stale(&mut self, now: Instant, max_hold: Duration) {
        for queue in &mut self.held {
            let before = queue.len();
            queue.retain(|held| now.duration_since(held.read_at) < max_hold);
            let released = before - queue.len();
            if released > 0 {
                tracing::debug!(
                    released,
                    "held entries outlived half their lease; the reclaimer redelivers them"
                );
            }
        }
    }

    /// Highest priority first: what is held of a stream, then the stream itself — read only
    /// once nothing of it is held, so a held entry is always its stream's head.
    async fn stream_by_stream(
        &mut self,
        engine: &Engine,
        subscription: &Subscription,
        connection: &mut MultiplexedConnection,
        wanted: usize,
    ) -> Result<Vec<Delivered>, Error> {
        let mut batch = Vec::with_capacity(wanted);
        for priority in Priority::DELIVERY_ORDER {
            let queue = &mut self.held[priority_index(priority)];
            while batch.len() < wanted {
                let Some(held) = queue.pop_front() else { break };
                batch.push(held.delivered);
            }
            if batch.len() == wanted {
                break;
            }
            let room = wanted - batch.len();
            let read = engine
                .read_streams(subscription, connection, &[priority], room, None)
                .await?;
            let full = read.len() == room;
            batch.extend(read);
            if full {
                break;
            }
        }
        // Short of `wanted` means every stream was read to its end just now.
        self.backlog = batch.len() == wanted || self.holds_any();
        Ok(batch)
    }

    /// Hands over the first `wanted` entries of one read over all streams, but none below a
    /// stream that came back full (it may hold more, all of which go first); the rest is held.
    fn split_read(&mut self, read: Vec<Delivered>, wanted: usize, now: Instant) -> Vec<Delivered> {
        let mut per_priority = [0usize; 3];
        for entry in &read {
            per_priority[priority_index(entry.receipt.priority)] += 1;
        }
        let first_full = per_priority.iter().position(|count| *count >= wanted);
        self.backlog = first_full.is_some();
        let mut batch = Vec::with_capacity(read.len().min(wanted));
        for entry in read {
            let index = priority_index(entry.receipt.priority);
            let below_full = first_full.is_some_and(|full| index > full);
            if batch.len() < wanted && !below_full {
                batch.push(entry);
            } else {
                self.held[index].push_back(Held {
                    delivered: entry,
                    read_at: now,
                });
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{envelope::StoredEntry, topic::Receipt};

    fn entry(priority: Priority, id: &str) -> Delivered {
        Delivered {
            receipt: Receipt {
                topic: "t".into(),
                priority,
                entry_id: id.into(),
            },
            entry: StoredEntry::default(),
        }
    }

    fn ids(batch: &[Delivered]) -> Vec<&str> {
        batch
            .iter()
            .map(|entry| entry.receipt.entry_id.as_str())
            .collect()
    }

    #[test]
    fn a_drained_read_is_handed_over_whole_and_needs_no_probing_next() {
        let mut fetcher = Fetcher::new();
        let read = vec![entry(Priority::High, "h1"), entry(Priority::Low, "l1")];
        let batch = fetcher.split_read(read, 8, Instant::now());
        assert_eq!(ids(&batch), ["h1", "l1"]);
        assert!(!fetcher.backlog && !fetcher.holds_any());
    }

    #[test]
    fn entries_below_a_full_stream_wait_for_that_stream_to_drain() {
        let mut fetcher = Fetcher::new();
        let read = vec![
            entry(Priority::High, "h1"),
            entry(Priority::Normal, "n1"),
            entry(Priority::Normal, "n2"),
            entry(Priority::Low, "l1"),
        ];
        let batch = fetcher.split_read(read, 2, Instant::now());
        assert_eq!(ids(&batch), ["h1", "n1"]);
        assert!(fetcher.backlog);
        assert_eq!(fetcher.held[1].len(), 1, "n2 is the head of NORMAL now");
        assert_eq!(fetcher.held[2].len(), 1, "l1 waits behind NORMAL");
    }

    #[test]
    fn entries_held_back_go_first_in_their_order_before_older_holds() {
        let mut fetcher = Fetcher::new();
        let read = vec![entry(Priority::Normal, "n3"), entry(Priority::Low, "l1")];
        fetcher.split_read(read, 1, Instant::now());
        fetcher.hold_back(
            vec![
                entry(Priority::High, "h1"),
                entry(Priority::Normal, "n1"),
                entry(Priority::Normal, "n2"),
            ],
            Instant::now(),
        );
        assert!(!fetcher.keeps_up());
        let order: Vec<Vec<&str>> = fetcher
            .held
            .iter()
            .map(|queue| {
                queue
                    .iter()
                    .map(|held| held.delivered.receipt.entry_id.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(order, [vec!["h1"], vec!["n1", "n2"], vec!["l1"]]);
    }

    #[test]
    fn held_entries_past_half_their_lease_are_let_go() {
        let mut fetcher = Fetcher::new();
        let long_ago = Instant::now();
        fetcher.split_read(
            vec![entry(Priority::Normal, "n1"), entry(Priority::Low, "l1")],
            1,
            long_ago,
        );
        assert!(fetcher.holds_any());
        fetcher.release_stale(long_ago + Duration::from_secs(20), Duration::from_secs(15));
        assert!(!fetcher.holds_any());
    }
}
