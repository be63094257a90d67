//! The broker's state changes that must be atomic, as Lua scripts run inside Redis. Each one
//! touches only the keys of one topic, which share the `{topic}` hash tag and so one Redis
//! Cluster slot.
//!
//! Stream entries carry three fields: `m` (the encoded message), `a` (deliveries that ended
//! without an ack) and `h` (attempt history, one line per ended attempt:
//! `attempt|group|consumer|ended_ms|outcome|reason`). `a` and `h` are absent while zero/empty.
//! Delayed messages (scheduled publishes and retries) wait in a sorted set scored by due time,
//! as `cmsgpack({priority, m, a, h})`.
//!
//! Keys of every script: 1-3 the HIGH, NORMAL and LOW streams, 4 the delayed set, 5 the DLQ.

use redis::Script;

/// Shared Lua helpers, prepended to each script.
const PRELUDE: &str = r#"
local function stream_for(p)
  if p == 'h' then return KEYS[1] elseif p == 'n' then return KEYS[2] else return KEYS[3] end
end
local function fields_to_map(fields)
  local map = {}
  for i = 1, #fields, 2 do map[fields[i]] = fields[i + 1] end
  return map
end
local function enqueue(p, m, a, h)
  if a > 0 then
    return redis.call('XADD', stream_for(p), '*', 'm', m, 'a', a, 'h', h)
  end
  return redis.call('XADD', stream_for(p), '*', 'm', m)
end
local function depth()
  return redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2]) + redis.call('XLEN', KEYS[3])
    + redis.call('ZCARD', KEYS[4])
end
-- Ends one attempt of a pending entry: removes it from the stream and either schedules a retry
-- (backoff computed here so it sees the real attempt count) or dead-letters it.
-- Returns 1 when dead-lettered, 0 when a retry was scheduled.
-- The backoff chosen by the last end_attempt call, for scripts that report it.
local last_delay = 0
local function end_attempt(p, id, fields, group, consumer, now, outcome, reason, permanent,
                           max_attempts, base_ms, factor, max_ms, spread, retry_after_ms)
  local map = fields_to_map(fields)
  local attempts = tonumber(map['a'] or '0') + 1
  local line = attempts .. '|' .. group .. '|' .. consumer .. '|' .. now .. '|' .. outcome .. '|' .. reason
  local history = map['h']
  if history == nil or history == '' then history = line else history = history .. '\n' .. line end
  redis.call('XDEL', stream_for(p), id)
  if permanent or attempts >= max_attempts then
    local cause = 'max_attempts'
    if permanent then cause = 'permanent_nack' end
    redis.call('XADD', KEYS[5], '*', 'm', map['m'], 'a', attempts, 'h', history, 'p', p,
      'cause', cause, 'reason', reason, 'group', group, 'at', now)
    return 1
  end
  local delay = retry_after_ms
  if delay <= 0 then
    delay = math.min(max_ms, base_ms * (factor ^ (attempts - 1))) * spread
  end
  local member = cmsgpack.pack({p, map['m'], attempts, history})
  last_delay = math.floor(delay)
  redis.call('ZADD', KEYS[4], now + last_delay, member)
  return 0
end
"#;

/// Publishes a batch to one topic. ARGV: now_ms, limit_high, limit_normal, limit_low,
/// window_ms, then 5 per message: priority, message id (only read with an idempotency key),
/// encoded message, idempotency key (full Redis key or ""), due_ms (0 = now).
/// Returns `{statuses, extra…}`: `statuses` has one character per message, `0` = enqueued,
/// `1` = duplicate, `2` = refused (topic full for this priority); `extra` holds, in order, the
/// first message's id for each duplicate and the depth for each refusal. The reply stays this
/// small because it is built once per message of every batch.
const PUBLISH: &str = r#"
local now = tonumber(ARGV[1])
local limits = {h = tonumber(ARGV[2]), n = tonumber(ARGV[3]), l = tonumber(ARGV[4])}
local window = tonumber(ARGV[5])
local current = depth()
local statuses = {}
local reply = {''}
for i = 6, #ARGV, 5 do
  local p, idem, due = ARGV[i], ARGV[i + 3], ARGV[i + 4]
  if current >= limits[p] then
    statuses[#statuses + 1] = '2'
    reply[#reply + 1] = current
  else
    local first = false
    if idem ~= '' then
      first = redis.call('SET', idem, ARGV[i + 1], 'NX', 'PX', window, 'GET')
    end
    if first then
      statuses[#statuses + 1] = '1'
      reply[#reply + 1] = first
    else
      if due ~= '0' and tonumber(due) > now then
        redis.call('ZADD', KEYS[4], tonumber(due), cmsgpack.pack({p, ARGV[i + 2], 0, ''}))
      else
        redis.call('XADD', stream_for(p), '*', 'm', ARGV[i + 2])
      end
      current = current + 1
      statuses[#statuses + 1] = '0'
    end
  end
end
reply[1] = table.concat(statuses)
return reply
"#;

/// Acknowledges entries of one topic. ARGV: group, then pairs (priority, entry id). Returns
/// the 1-based pair indexes that were not pending (unknown or already settled).
const ACK: &str = r#"
local group = ARGV[1]
local unknown = {}
for i = 2, #ARGV, 2 do
  local key = stream_for(ARGV[i])
  if redis.call('XACK', key, group, ARGV[i + 1]) == 1 then
    redis.call('XDEL', key, ARGV[i + 1])
  else
    table.insert(unknown, (i - 2) / 2 + 1)
  end
end
return unknown
"#;

/// Acknowledges a batch of entries of one priority stream and returns how many were pending.
/// ARGV: group, then entry ids. One `XACK` for the batch; entries are deleted only when every
/// one was pending, or else only those the group has already read (ids up to its last
/// delivered id): an id above it was never delivered, and a forged or stale receipt must not
/// delete it.
const ACK_BATCH: &str = r#"
local group = ARGV[1]
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local acked = redis.call('XACK', KEYS[1], group, unpack(ids))
if acked == #ids then
  redis.call('XDEL', KEYS[1], unpack(ids))
  return acked
end
local last = '0-0'
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local map = fields_to_map(info)
  if map['name'] == group then last = map['last-delivered-id'] end
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last_ms, last_seq = parse(last)
for _, id in ipairs(ids) do
  local ms, seq = parse(id)
  if ms and (ms < last_ms or (ms == last_ms and seq <= last_seq)) then
    redis.call('XDEL', KEYS[1], id)
  end
end
return acked
"#;

/// Rejects one entry. ARGV: group, priority, entry id, consumer ("" = whoever holds the lease,
/// for the unary Nack), now_ms, reason, permanent (0/1), max_attempts, base_ms, factor, max_ms,
/// spread, retry_after_ms.
/// Returns `{-1, 0}` when the entry was not pending, `{1, 0}` when dead-lettered, and
/// `{0, backoff_ms}` when a retry is scheduled.
const NACK: &str = r#"
local group, p, id = ARGV[1], ARGV[2], ARGV[3]
local key = stream_for(p)
local consumer = ARGV[4]
if consumer == '' then
  if redis.call('EXISTS', key) == 0 then return {-1, 0} end
  local owner = redis.call('XPENDING', key, group, id, id, 1)
  if #owner == 0 then return {-1, 0} end
  consumer = owner[1][2]
end
if redis.call('XACK', key, group, id) == 0 then return {-1, 0} end
local entry = redis.call('XRANGE', key, id, id)
if #entry == 0 then return {-1, 0} end
local outcome = 'nacked_transient'
if ARGV[7] == '1' then outcome = 'nacked_permanent' end
local dead = end_attempt(p, id, entry[1][2], group, consumer, tonumber(ARGV[5]), outcome, ARGV[6], ARGV[7] == '1',
  tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]),
  tonumber(ARGV[13]))
return {dead, last_delay}
"#;

/// Ends the attempts whose lease expired (consumer crashed or too slow). ARGV: group,
/// min_idle_ms, max_entries, now_ms, max_attempts, base_ms, factor, max_ms, spread,
/// max_scans, then the HIGH, NORMAL and LOW cursors to start from ('0-0' = the beginning,
/// '' = skip the stream: a whole sweep already reached its end).
/// Each `XAUTOCLAIM` call looks at up to 1,000 pending entries, so `max_scans` bounds how long
/// one pass holds Redis however many deliveries are in flight; a pass that stops early returns
/// where to go on. Returns `{reclaimed, dead_lettered, cursor_high, cursor_normal, cursor_low}`
/// ('0-0' = that stream was swept to its end).
const RECLAIM: &str = r#"
local group, min_idle, budget, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_scans = tonumber(ARGV[10])
local reclaimed, dead = 0, 0
local cursors = {}
for index, p in ipairs({'h', 'n', 'l'}) do
  local key = stream_for(p)
  local cursor = ARGV[10 + index]
  local scans = 0
  -- An empty cursor: this stream was swept to its end earlier in a whole sweep.
  if cursor ~= '' then repeat
    local reply = redis.call('XAUTOCLAIM', key, group, 'tta-reclaimer', min_idle, cursor, 'COUNT', 100)
    scans = scans + 1
    cursor = reply[1]
    for _, entry in ipairs(reply[2]) do
      local id, fields = entry[1], entry[2]
      redis.call('XACK', key, group, id)
      if fields then
        reclaimed = reclaimed + 1
        dead = dead + end_attempt(p, id, fields, group, '', now, 'lease_expired', 'visibility timeout expired',
          false, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]),
          tonumber(ARGV[9]), 0)
      end
      budget = budget - 1
    end
    -- Entries deleted while pending come back as ids only; acking them above cleared them.
    if reply[3] then
      for _, id in ipairs(reply[3]) do redis.call('XACK', key, group, id) end
    end
  until cursor == '0-0' or budget <= 0 or scans >= max_scans end
  cursors[index] = cursor
end
return {reclaimed, dead, cursors[1], cursors[2], cursors[3]}
"#;

/// Moves due delayed messages into their streams. ARGV: now_ms, max_entries. Returns the count.
const PROMOTE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local item = cmsgpack.unpack(member)
  enqueue(item[1], item[2], item[3], item[4])
  redis.call('ZREM', KEYS[4], member)
end
return #due
"#;

/// Moves dead letters back into the topic with their attempt count reset and history kept.
/// ARGV: priority override ("" keeps each letter's own), max_entries, then DLQ entry ids
/// (none = the oldest `max_entries`). Returns `{replayed, {missing ids}}`.
const REPLAY: &str = r#"
local override, budget = ARGV[1], tonumber(ARGV[2])
local entries = {}
if #ARGV > 2 then
  for i = 3, #ARGV do
    local found = redis.call('XRANGE', KEYS[5], ARGV[i], ARGV[i])
    if #found == 1 then table.insert(entries, found[1]) else table.insert(entries, {ARGV[i], false}) end
  end
else
  entries = redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', budget)
end
local replayed, missing = 0, {}
for _, entry in ipairs(entries) do
  if entry[2] then
    local map = fields_to_map(entry[2])
    local p = map['p']
    if override ~= '' then p = override end
    redis.call('XADD', stream_for(p), '*', 'm', map['m'], 'h', map['h'] or '')
    redis.call('XDEL', KEYS[5], entry[1])
    replayed = replayed + 1
  else
    table.insert(missing, entry[1])
  end
end
return {replayed, missing}
"#;

/// The broker's scripts, compiled once (their SHA1s are computed here; Redis loads them on
/// first use and again after a restart, which `redis::Script` handles).
#[derive(Debug, Clone)]
pub struct Scripts {
    pub publish: Script,
    pub ack: Script,
    pub ack_batch: Script,
    pub nack: Script,
    pub reclaim: Script,
    pub promote: Script,
    pub replay: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            publish: with_prelude(PUBLISH),
            ack: with_prelude(ACK),
            ack_batch: with_prelude(ACK_BATCH),
            nack: with_prelude(NACK),
            reclaim: with_prelude(RECLAIM),
            promote: with_prelude(PROMOTE),
            replay: with_prelude(REPLAY),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
