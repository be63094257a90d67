//! Escalation to human oversight (R5.4): an event per situation a person must look at, written
//! durably to the Redis stream `<prefix>:safety:escalations` and acknowledged by whoever takes
//! charge.
//!
//! Writing is never best effort: [`EscalationStore::raise`] returns only after Redis answered the
//! `XADD`, and a failure is an error the caller must handle (retry, answer UNAVAILABLE) — an
//! escalation is never dropped silently. The stream entry id is the event id, so events are
//! ordered by time and found again without a second index. Acknowledgements live in the hash
//! `<prefix>:safety:escalations:acks` (`HSETNX`: the first acknowledger is kept).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::Value;
use serde::{Deserialize, Serialize};
use tta_runtime::redis::{Keyspace, RedisPool};

use crate::{
    error::Error,
    metrics,
    verdict::{Action, Assessment, Level, MAX_EXCERPT_BYTES, Source},
};

/// Why an escalation was raised (`tta.v1.EscalationReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EscalationReason {
    /// A crisis signal in the player's input.
    Crisis,
    /// A CRITICAL verdict without a crisis signal.
    CriticalContent,
    /// Agent output was blocked repeatedly in one turn or session.
    RepeatedBlocks,
    /// Session memory accumulated repeated risk signals.
    RepeatedRisk,
}

impl EscalationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationReason::Crisis => "crisis",
            EscalationReason::CriticalContent => "critical_content",
            EscalationReason::RepeatedBlocks => "repeated_blocks",
            EscalationReason::RepeatedRisk => "repeated_risk",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            EscalationReason::Crisis,
            EscalationReason::CriticalContent,
            EscalationReason::RepeatedBlocks,
            EscalationReason::RepeatedRisk,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == raw)
    }

    /// The reason an assessment escalates, if it does.
    pub fn for_assessment(assessment: &Assessment) -> Option<Self> {
        if assessment.action != Action::Escalate {
            return None;
        }
        Some(if assessment.raised_by_session {
            EscalationReason::RepeatedRisk
        } else if assessment.crisis {
            EscalationReason::Crisis
        } else {
            EscalationReason::CriticalContent
        })
    }
}

/// One situation handed to human oversight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationEvent {
    /// The stream entry id (`<ms>-<seq>`); empty until raised.
    pub id: String,
    pub session_id: String,
    pub user_id: String,
    pub turn_id: String,
    pub level: Level,
    pub categories: Vec<String>,
    pub reason: EscalationReason,
    pub source: Source,
    /// At most 200 bytes of the judged text around the first finding.
    pub excerpt: String,
    pub time: SystemTime,
    pub acked_by: Option<String>,
    pub acked_at: Option<SystemTime>,
    pub note: String,
}

/// A short excerpt of `text` around the findings of `assessment`, at most
/// [`MAX_EXCERPT_BYTES`], on character boundaries; `***` when the first finding is sensitive.
pub fn excerpt(text: &str, assessment: &Assessment) -> String {
    let Some(first) = assessment.findings.first() else {
        return crate::verdict::truncate_on_char_boundary(text, MAX_EXCERPT_BYTES).to_owned();
    };
    if first.excerpt == "***" {
        return "***".to_owned();
    }
    // Some context before the match helps a reviewer; start on a character boundary.
    let mut start = first.start.saturating_sub(60);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    crate::verdict::truncate_on_char_boundary(&text[start..], MAX_EXCERPT_BYTES).to_owned()
}

impl EscalationEvent {
    /// An event for `assessment` of `text`, not yet raised.
    pub fn new(
        assessment: &Assessment,
        text: &str,
        source: Source,
        reason: EscalationReason,
    ) -> Self {
        Self {
            id: String::new(),
            session_id: String::new(),
            user_id: String::new(),
            turn_id: String::new(),
            level: assessment.level,
            categories: assessment
                .categories
                .iter()
                .map(|c| c.to_string())
                .collect(),
            reason,
            source,
            excerpt: excerpt(text, assessment),
            time: SystemTime::now(),
            acked_by: None,
            acked_at: None,
            note: String::new(),
        }
    }

    pub fn with_session(mut self, session_id: &str) -> Self {
        self.session_id = session_id.to_owned();
        self
    }

    pub fn with_user(mut self, user_id: &str) -> Self {
        self.user_id = user_id.to_owned();
        self
    }

    pub fn with_turn(mut self, turn_id: &str) -> Self {
        self.turn_id = turn_id.to_owned();
        self
    }

    pub fn is_acked(&self) -> bool {
        self.acked_by.is_some()
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this session's events; empty means all.
    pub session_id: String,
    pub include_acked: bool,
    /// At most this many (0 means 100; capped at 1000).
    pub page_size: u32,
    /// Continue below this event id (exclusive), as returned by the previous page.
    pub page_token: String,
}

/// A page of events, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<EscalationEvent>,
    /// Empty on the last page.
    pub next_page_token: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AckRecord {
    acked_by: String,
    acked_at_ms: u64,
    note: String,
}

/// One stream entry as redis-rs reads it: id and fields.
type StreamEntry = (String, HashMap<String, Value>);

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Stream entries read per round trip while filling a page.
const SCAN_BATCH: usize = 256;
const MAX_ACKED_BY_BYTES: usize = 128;
const MAX_NOTE_BYTES: usize = 1024;

fn millis(at: SystemTime) -> u64 {
    u64::try_from(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A valid stream id: `<ms>-<seq>`, both decimal.
fn is_stream_id(raw: &str) -> bool {
    raw.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The escalation stream of one deployment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EscalationStore {
    pool: RedisPool,
    stream: String,
    acks: String,
}

impl EscalationStore {
    pub fn new(pool: RedisPool, keys: &Keyspace) -> Self {
        Self {
            pool,
            stream: keys.key(&["safety", "escalations"]),
            acks: keys.key(&["safety", "escalations", "acks"]),
        }
    }

    pub fn stream_key(&self) -> &str {
        &self.stream
    }

    /// Appends `event` to the stream and returns it with its id. Returns only after Redis
    /// acknowledged the write; on error nothing was written and the caller must retry or fail
    /// the request — never carry on as if the escalation happened.
    #[must_use = "an escalation that failed to be written must be retried or reported"]
    pub async fn raise(&self, mut event: EscalationEvent) -> Result<EscalationEvent, Error> {
        let mut connection = self.pool.get().await?;
        let id: String = redis::cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg("session")
            .arg(&event.session_id)
            .arg("user")
            .arg(&event.user_id)
            .arg("turn")
            .arg(&event.turn_id)
            .arg("level")
            .arg(event.level.as_str())
            .arg("categories")
            .arg(event.categories.join(","))
            .arg("reason")
            .arg(event.reason.as_str())
            .arg("source")
            .arg(event.source.as_str())
            .arg("excerpt")
            .arg(&event.excerpt)
            .arg("time_ms")
            .arg(millis(event.time))
            .query_async(&mut connection)
            .await?;
        metrics::record_escalation(event.reason.as_str());
        tracing::warn!(
            id = %id,
            session = %event.session_id,
            level = event.level.as_str(),
            reason = event.reason.as_str(),
            "safety escalation raised"
        );
        event.id = id;
        Ok(event)
    }

    /// Events newest first, filtered and paged.
    pub async fn list(&self, filter: &ListFilter) -> Result<Page, Error> {
        if !filter.page_token.is_empty() && !is_stream_id(&filter.page_token) {
            return Err(tta_types::FieldViolation::new(
                "page_token",
                "is not a token returned by a previous page",
            )
            .into());
        }
        let page_size = match filter.page_size {
            0 => DEFAULT_PAGE,
            size => size.min(MAX_PAGE),
        } as usize;
        let mut connection = self.pool.get().await?;
        let mut upper = if filter.page_token.is_empty() {
            "+".to_owned()
        } else {
            format!("({}", filter.page_token)
        };
        let mut events = Vec::new();
        loop {
            let entries: Vec<StreamEntry> = redis::cmd("XREVRANGE")
                .arg(&self.stream)
                .arg(&upper)
                .arg("-")
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut connection)
                .await?;
            let exhausted = entries.len() < SCAN_BATCH;
            let last_id = entries.last().map(|(id, _)| id.clone());
            let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
            let acks = self.acks_of(&mut connection, &ids).await?;
            for ((id, fields), ack) in entries.iter().zip(acks) {
                let mut event = decode(id, fields)?;
                apply_ack(&mut event, ack.as_deref())?;
                let wanted = (filter.session_id.is_empty()
                    || event.session_id == filter.session_id)
                    && (filter.include_acked || !event.is_acked());
                if wanted {
                    events.push(event);
                    if events.len() == page_size {
                        // A full page may be the last one; the next call then returns an empty
                        // page, which is cheaper than reading ahead to find out.
                        return Ok(Page {
                            events,
                            next_page_token: id.clone(),
                        });
                    }
                }
            }
            match last_id {
                Some(last) if !exhausted => upper = format!("({last}"),
                _ => {
                    return Ok(Page {
                        events,
                        next_page_token: String::new(),
                    });
                }
            }
        }
    }

    /// One event by id.
    pub async fn get(&self, id: &str) -> Result<EscalationEvent, Error> {
        if !is_stream_id(id) {
            return Err(Error::EscalationNotFound(id.to_owned()));
        }
        let mut connection = self.pool.get().await?;
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg(id)
            .arg(id)
            .query_async(&mut connection)
            .await?;
        let Some((id, fields)) = entries.first() else {
            return Err(Error::EscalationNotFound(id.to_owned()));
        };
        let mut event = decode(id, fields)?;
        let ack: Option<String> = redis::cmd("HGET")
            .arg(&self.acks)
            .arg(id)
            .query_async(&mut connection)
            .await?;
        apply_ack(&mut event, ack.as_deref())?;
        Ok(event)
    }

    /// Records that `acked_by` has taken charge. Idempotent: the first acknowledgement is kept
    /// and returned to every later caller.
    pub async fn ack(
        &self,
        id: &str,
        acked_by: &str,
        note: &str,
    ) -> Result<EscalationEvent, Error> {
        let acked_by = acked_by.trim();
        if acked_by.is_empty() {
            return Err(tta_types::FieldViolation::new("acked_by", "must not be empty").into());
        }
        if acked_by.len() > MAX_ACKED_BY_BYTES {
            return Err(tta_types::FieldViolation::new(
                "acked_by",
                format!("must be at most {MAX_ACKED_BY_BYTES} bytes"),
            )
            .into());
        }
        if note.len() > MAX_NOTE_BYTES {
            return Err(tta_types::FieldViolation::new(
                "note",
                format!("must be at most {MAX_NOTE_BYTES} bytes"),
            )
            .into());
        }
        // Existence first, so an unknown id is NOT_FOUND instead of a dangling acknowledgement.
        self.get(id).await?;
        let record = AckRecord {
            acked_by: acked_by.to_owned(),
            acked_at_ms: millis(SystemTime::now()),
            note: note.to_owned(),
        };
        let encoded = serde_json::to_string(&record).map_err(|err| Error::Corrupt {
            id: id.to_owned(),
            reason: err.to_string(),
        })?;
        let mut connection = self.pool.get().await?;
        let _: bool = redis::cmd("HSETNX")
            .arg(&self.acks)
            .arg(id)
            .arg(encoded)
            .query_async(&mut connection)
            .await?;
        self.get(id).await
    }

    /// Waits up to `block` for events newer than `after` (`$` for "from now") and returns them
    /// oldest first; for `tta escalations tail --follow`.
    pub async fn read_after(
        &self,
        after: &str,
        block: Duration,
    ) -> Result<Vec<EscalationEvent>, Error> {
        let mut connection = self.pool.get().await?;
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(after)
            .query_async(&mut connection)
            .await?;
        let mut events = Vec::new();
        if matches!(reply, Value::Nil) {
            return Ok(events);
        }
        // RESP2 answers a list of [stream, entries] pairs.
        let streams: Vec<(String, Vec<StreamEntry>)> =
            redis::from_redis_value(reply).map_err(|err| Error::Storage(err.to_string()))?;
        for (_, entries) in streams {
            for (id, fields) in &entries {
                events.push(decode(id, fields)?);
            }
        }
        Ok(events)
    }

    /// Creates consumer group `group` on the stream, starting with events raised from now on;
    /// an existing group is kept as it is.
    pub async fn ensure_group(&self, group: &str) -> Result<(), Error> {
        let mut connection = self.pool.get().await?;
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Err(err) if err.code() != Some("BUSYGROUP") => Err(err.into()),
            _ => Ok(()),
        }
    }

    /// Events for `consumer` of `group`: its own unacknowledged ones first (`pending`), else
    /// new ones, waiting up to `block`. A delivered event stays pending until [`Self::ack_group`],
    /// so a forwarder that dies before acknowledging gets it again.
    pub async fn read_group(
        &self,
        group: &str,
        consumer: &str,
        pending: bool,
        block: Duration,
    ) -> Result<Vec<EscalationEvent>, Error> {
        let mut connection = self.pool.get().await?;
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(SCAN_BATCH);
        if !pending {
            let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
            command.arg("BLOCK").arg(block_ms);
        }
        command
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(if pending { "0" } else { ">" });
        let reply: Value = command.query_async(&mut connection).await?;
        let mut events = Vec::new();
        if matches!(reply, Value::Nil) {
            return Ok(events);
        }
        let streams: Vec<(String, Vec<StreamEntry>)> =
            redis::from_redis_value(reply).map_err(|err| Error::Storage(err.to_string()))?;
        for (_, entries) in streams {
            for (id, fields) in &entries {
                events.push(decode(id, fields)?);
            }
        }
        Ok(events)
    }

    /// Takes over events another consumer of `group` left unacknowledged for `min_idle` (it
    /// died); they are then pending for `consumer`.
    pub async fn claim_stale(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
    ) -> Result<usize, Error> {
        let mut connection = self.pool.get().await?;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(group)
            .arg(consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg("0")
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .arg("JUSTID")
            .query_async(&mut connection)
            .await?;
        let claimed = match reply {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::Array(ids)) => ids.len(),
                _ => 0,
            },
            _ => 0,
        };
        Ok(claimed)
    }

    /// Marks an event of `group` as handled.
    pub async fn ack_group(&self, group: &str, id: &str) -> Result<(), Error> {
        let mut connection = self.pool.get().await?;
        let _: u64 = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(group)
            .arg(id)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// The id of the newest event, if any (`tail --follow` starts after it).
    pub async fn last_id(&self) -> Result<Option<String>, Error> {
        let mut connection = self.pool.get().await?;
        let entries: Vec<StreamEntry> = redis::cmd("XREVRANGE")
            .arg(&self.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await?;
        Ok(entries.into_iter().next().map(|(id, _)| id))
    }

    async fn acks_of(
        &self,
        connection: &mut deadpool_redis::Connection,
        ids: &[&str],
    ) -> Result<Vec<Option<String>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let acks: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&self.acks)
            .arg(ids)
            .query_async(connection)
            .await?;
        Ok(acks)
    }
}

fn field(fields: &HashMap<String, Value>, name: &str) -> String {
    fields
        .get(name)
        .and_then(|value| redis::from_redis_value::<String>(value.clone()).ok())
        .unwrap_or_default()
}

fn decode(id: &str, fields: &HashMap<String, Value>) -> Result<EscalationEvent, Error> {
    let corrupt = |reason: String| Error::Corrupt {
        id: id.to_owned(),
        reason,
    };
    let level = field(fields, "level")
        .parse::<Level>()
        .map_err(|err| corrupt(format!("level: {err}")))?;
    let reason = EscalationReason::parse(&field(fields, "reason"))
        .ok_or_else(|| corrupt(format!("unknown reason {:?}", field(fields, "reason"))))?;
    let source = field(fields, "source")
        .parse::<Source>()
        .map_err(|err| corrupt(format!("source: {err}")))?;
    let time_ms = field(fields, "time_ms")
        .parse::<u64>()
        .map_err(|err| corrupt(format!("time_ms: {err}")))?;
    let categories = field(fields, "categories");
    Ok(EscalationEvent {
        id: id.to_owned(),
        session_id: field(fields, "session"),
        user_id: field(fields, "user"),
        turn_id: field(fields, "turn"),
        level,
        categories: categories
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        reason,
        source,
        excerpt: field(fields, "excerpt"),
        time: from_millis(time_ms),
        acked_by: None,
        acked_at: None,
        note: String::new(),
    })
}

fn apply_ack(event: &mut EscalationEvent, ack: Option<&str>) -> Result<(), Error> {
    let Some(raw) = ack else {
        return Ok(());
    };
    let record: AckRecord = serde_json::from_str(raw).map_err(|err| Error::Corrupt {
        id: event.id.clone(),
        reason: format!("acknowledgement: {err}"),
    })?;
    event.acked_by = Some(record.acked_by);
    event.acked_at = Some(from_millis(record.acked_at_ms));
    event.note = record.note;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SafetyEngine;

    #[test]
    fn reasons_follow_the_assessment() {
        let engine = SafetyEngine::builtin().unwrap();
        let crisis = engine.classify("i want to end my life", Source::User);
        assert_eq!(
            EscalationReason::for_assessment(&crisis),
            Some(EscalationReason::Crisis)
        );
        let calm = engine.classify("I open the door", Source::User);
        assert_eq!(EscalationReason::for_assessment(&calm), None);
        let mut raised = engine.classify("i feel hopeless", Source::User);
        raised.action = Action::Escalate;
        raised.raised_by_session = true;
        assert_eq!(
            EscalationReason::for_assessment(&raised),
            Some(EscalationReason::RepeatedRisk)
        );
    }

    #[test]
    fn excerpts_are_bounded_and_start_near_the_finding() {
        let engine = SafetyEngine::builtin().unwrap();
        let text = format!(
            "{} and honestly i want to die {}",
            "a".repeat(300),
            "b".repeat(300)
        );
        let assessment = engine.classify(&text, Source::User);
        let excerpt = excerpt(&text, &assessment);
        assert!(excerpt.len() <= MAX_EXCERPT_BYTES);
        assert!(excerpt.contains("want to die"), "{excerpt}");
    }

    #[test]
    fn only_stream_ids_are_accepted_as_ids_and_tokens() {
        assert!(is_stream_id("1732437000000-0"));
        assert!(!is_stream_id("1732437000000"));
        assert!(!is_stream_id("abc-0"));
        assert!(!is_stream_id("-"));
    }
}
