//! The Lua scripts that change the cluster's state. Each runs atomically in
//! Redis, so every claim, pairing and ending is one step that no other node
//! can interleave with: that is what makes IDs unique across nodes and every
//! ended pairing announced exactly once.
//!
//! Keys (under the operator's `--cluster-prefix`, `sd:` by default; one Redis primary, so keys are built inside the
//! scripts, which Redis Cluster would refuse):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `nodes` | sorted set | live incarnations → last heartbeat (Redis `TIME`, ms) |
//! | `dead` | set | incarnations declared dead whose clients are still being reaped |
//! | `dead_ms` | string | the dead-after every node must agree on |
//! | `c:ID` | hash | the holder of ID: `n` incarnation, `c` connection, `t` token hash (hex, or empty), `a` its address key (for the reservation quota), and while paired `p` peer ID, `pn`/`pc` its incarnation and connection, `e` the pairing's number |
//! | `n:INC` | set | the IDs incarnation INC holds |
//! | `in:INC` | stream | INC's inbox: control events and relayed frames, in the order Redis made them |
//! | `rz`, `rh`, `ro` | sorted set, hashes | reservations: ID → expiry (ms), ID → token hash, ID → address key |
//! | `ra:ADDR` | sorted set | the reservations made from one address key → expiry (its quota) |
//! | `pairing`, `nclients`, `npairs`, `revicted`, `rrefused` | strings | counters |
//!
//! Every script takes `ARGV[1]` dead-after (ms), `ARGV[2]` the caller's
//! incarnation, `ARGV[3]` the reservation time (ms), `ARGV[4]` the most
//! reservations kept, `ARGV[5]` the key prefix, `ARGV[6]` the most
//! reservations per address; its own arguments follow from `ARGV[7]`. Every script a node runs
//! for its clients first checks that the node itself is alive (its last
//! heartbeat within dead-after, by Redis's clock): a node that was paused
//! or cut off past its deadline can change nothing, so it can never send a
//! second notice for a pairing the reaper already ended.
//!
//! Events for a node are collected while a script runs and added to its
//! inbox as one entry per node (`k`=`x`, `j`=a JSON list of operations), so
//! a node applies both sides of a same-node change at once. `NOMKSTREAM`:
//! an inbox that the reaper deleted is not made again by a late event.
//!
//! Token hashes are compared with Lua's `==`: an early exit there tells how
//! many leading bytes of a SHA-256 match, which says nothing about a token.

use redis::Script;

const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = tonumber(ARGV[1])
local me = ARGV[2]
local reserve_ms = tonumber(ARGV[3])
local max_res = tonumber(ARGV[4])
local P = ARGV[5]
local per_addr = tonumber(ARGV[6])

local function alive(inc)
  local s = redis.call('ZSCORE', P .. 'nodes', inc)
  return s and (now - tonumber(s) <= dead)
end

local out, order = {}, {}
local function emit(inc, op)
  if not out[inc] then
    out[inc] = {}
    order[#order + 1] = inc
  end
  local ops = out[inc]
  ops[#ops + 1] = op
end
-- Adds the collected events; returns the entry ID of the caller's own
-- inbox ('' if none), which the caller waits to have applied.
local function flush()
  local mine = ''
  for _, inc in ipairs(order) do
    local id = redis.call('XADD', P .. 'in:' .. inc, 'NOMKSTREAM', '*',
      'k', 'x', 'j', cjson.encode(out[inc]))
    if inc == me and id then mine = id end
  end
  return mine
end

-- Ends x's pairing, if any: both sides cleared, the other side told
-- `reason` (exactly once: the pairing is gone after this), x's own node
-- told to forget it if tell_self.
local function endpair(x, reason, tell_self)
  local k = P .. 'c:' .. x
  local X = redis.call('HMGET', k, 'n', 'c', 'p', 'e')
  if not X[3] then return false end
  local y, e = X[3], X[4]
  redis.call('HDEL', k, 'p', 'pn', 'pc', 'e')
  redis.call('DECR', P .. 'npairs')
  if tell_self then emit(X[1], {o = 'end', id = x, c = X[2], e = e}) end
  local ky = P .. 'c:' .. y
  local Y = redis.call('HMGET', ky, 'n', 'c', 'p', 'e')
  if Y[3] == x and Y[4] == e then
    redis.call('HDEL', ky, 'p', 'pn', 'pc', 'e')
    emit(Y[1], {o = 'end', id = y, c = Y[2], e = e, r = reason, p = x})
  end
  return true
end

-- The last entry of inc's inbox: a caller refused because of a change it
-- has not applied yet (a pairing another node just made with it) waits
-- for this before it answers, so it never sees the refusal first.
local function tail(inc)
  local r = redis.call('XREVRANGE', P .. 'in:' .. inc, '+', '-', 'COUNT', 1)
  if r[1] then return r[1][1] end
  return ''
end

-- Forgets id's reservation, if any.
local function unreserve(id)
  local a = redis.call('HGET', P .. 'ro', id)
  redis.call('ZREM', P .. 'rz', id)
  redis.call('HDEL', P .. 'rh', id)
  if a then
    redis.call('HDEL', P .. 'ro', id)
    redis.call('ZREM', P .. 'ra:' .. a, id)
  end
end

-- Drops expired reservations (each once: the cost is paid by the
-- reservation that made it).
local function sweep()
  repeat
    local gone = redis.call('ZRANGEBYSCORE', P .. 'rz', '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(gone) do unreserve(id) end
  until #gone < 100
end

-- Keeps id for the holder of tok, who registered from addr, for
-- reserve_ms: at most max_res in all and per_addr (0: no quota) from one
-- address. An address at its quota, or reserving into a full table, gives
-- up its own oldest (counted in revicted); one that holds none in a full
-- table gets nothing (rrefused). Never another address's: reserve.rs is
-- the same policy in memory.
local function reserve(id, tok, addr)
  if reserve_ms <= 0 or max_res <= 0 then return end
  sweep()
  unreserve(id)
  local ka = P .. 'ra:' .. addr
  local mine = redis.call('ZCARD', ka)
  if (per_addr > 0 and mine >= per_addr) or redis.call('ZCARD', P .. 'rz') >= max_res then
    if mine == 0 then
      redis.call('INCR', P .. 'rrefused')
      return
    end
    unreserve(redis.call('ZRANGE', ka, 0, 0)[1])
    redis.call('INCR', P .. 'revicted')
  end
  redis.call('ZADD', P .. 'rz', now + reserve_ms, id)
  redis.call('HSET', P .. 'rh', id, tok)
  redis.call('HSET', P .. 'ro', id, addr)
  redis.call('ZADD', ka, now + reserve_ms, id)
end

-- 'free', 'owner' (reserved to tok) or 'taken'.
local function reserved(id, tok)
  local u = redis.call('ZSCORE', P .. 'rz', id)
  if not u then return 'free' end
  if tonumber(u) <= now then
    unreserve(id)
    return 'free'
  end
  if tok ~= '' and redis.call('HGET', P .. 'rh', id) == tok then return 'owner' end
  return 'taken'
end
"#;

/// A new incarnation joins. Refused while live nodes use another
/// dead-after (they would disagree on who is dead). Creates the inbox and
/// returns its first entry's ID, where reading starts.
const JOIN: &str = r#"
local cur = redis.call('GET', P .. 'dead_ms')
if cur and tonumber(cur) ~= dead then
  local live = redis.call('ZRANGEBYSCORE', P .. 'nodes', now - tonumber(cur), '+inf', 'LIMIT', 0, 1)
  if #live > 0 then return {'mismatch', cur} end
end
redis.call('SET', P .. 'dead_ms', dead)
redis.call('ZADD', P .. 'nodes', now, me)
local id = redis.call('XADD', P .. 'in:' .. me, '*', 'k', 'hello')
return {'ok', id}
"#;

/// `ok`, or `fenced`: the node is not (or no longer) alive; past its
/// deadline it is declared dead here and now, reaped by whoever reaps next.
const HEARTBEAT: &str = r#"
local s = redis.call('ZSCORE', P .. 'nodes', me)
if not s then return {'fenced'} end
if now - tonumber(s) > dead then
  redis.call('ZREM', P .. 'nodes', me)
  redis.call('SADD', P .. 'dead', me)
  return {'fenced'}
end
redis.call('ZADD', P .. 'nodes', now, me)
return {'ok'}
"#;

/// A node that stops on purpose: its remaining clients are reaped.
const LEAVE: &str = r#"
if redis.call('ZREM', P .. 'nodes', me) == 1 then
  redis.call('SADD', P .. 'dead', me)
end
return {'ok'}
"#;

/// ARGV[7] id, [8] connection, [9] token hash or '', [10] '1' if the node
/// has room for a new client, [11] '1' for a random ID (never refused:
/// `retry` with another), [12] the client's address key (its reservation
/// counts against that address's quota when it leaves). The contract's order: a live holder is replaced
/// by its token or `id_taken`; a reservation is the token's or `id_taken`;
/// then the client limit, which a replacement does not count against. A
/// holder on a dead node is a reservation for its token (or free without
/// one): its owner need not wait for the reaper.
const CLAIM: &str = r#"
if not alive(me) then return {'fenced'} end
local id, conn, tok = ARGV[7], ARGV[8], ARGV[9]
local room, random, addr = ARGV[10] == '1', ARGV[11] == '1', ARGV[12]
local k = P .. 'c:' .. id
local X = redis.call('HMGET', k, 'n', 'c', 't')
local take_over = false
if X[1] then
  if random then return {'retry'} end
  local live = alive(X[1])
  if tok ~= '' and X[3] == tok then
    if live then take_over = 'replaced' else take_over = 'left' end
  elseif live or (X[3] and X[3] ~= '') then
    return {'id_taken'}
  else
    if not room then return {'full'} end
    take_over = 'left'
  end
else
  local r = reserved(id, tok)
  if r == 'taken' then
    if random then return {'retry'} end
    return {'id_taken'}
  end
  if random and r ~= 'free' then return {'retry'} end
  if not room then return {'full'} end
  if r == 'owner' then unreserve(id) end
end
if take_over then
  endpair(id, take_over, false)
  if take_over == 'replaced' then emit(X[1], {o = 'kick', id = id, c = X[2]}) end
  redis.call('SREM', P .. 'n:' .. X[1], id)
  redis.call('DEL', k)
  redis.call('DECR', P .. 'nclients')
end
redis.call('HSET', k, 'n', me, 'c', conn, 't', tok, 'a', addr)
redis.call('SADD', P .. 'n:' .. me, id)
redis.call('INCR', P .. 'nclients')
return {'ok', flush()}
"#;

/// ARGV[7] the initiator's ID, [8] its connection, [9] the peer's ID.
/// Checks in the contract's order after `self_pair` (checked by the
/// node): `already_paired`, `unknown_peer` (a holder on a dead node is
/// gone), `peer_busy`. `gone`: the caller is no longer the holder (being
/// replaced or removed). Every answer carries an entry of the caller's
/// inbox to wait for: its own event, or the last one there for a refusal.
const PAIR: &str = r#"
if not alive(me) then return {'fenced'} end
local a, ac, b = ARGV[7], ARGV[8], ARGV[9]
local ka, kb = P .. 'c:' .. a, P .. 'c:' .. b
local A = redis.call('HMGET', ka, 'n', 'c', 'p')
if A[1] ~= me or A[2] ~= ac then return {'gone'} end
if A[3] then return {'already_paired', tail(me)} end
local B = redis.call('HMGET', kb, 'n', 'c', 'p')
if not B[1] or not alive(B[1]) then return {'unknown_peer', tail(me)} end
if B[3] then return {'peer_busy', tail(me)} end
local e = tostring(redis.call('INCR', P .. 'pairing'))
redis.call('HSET', ka, 'p', b, 'pn', B[1], 'pc', B[2], 'e', e)
redis.call('HSET', kb, 'p', a, 'pn', me, 'pc', ac, 'e', e)
redis.call('INCR', P .. 'npairs')
emit(me, {o = 'paired', id = a, c = ac, p = b, pn = B[1], pc = B[2], e = e, i = true})
emit(B[1], {o = 'paired', id = b, c = B[2], p = a, pn = me, pc = ac, e = e, i = false})
return {'ok', flush()}
"#;

/// ARGV[7] ID, [8] connection: ends its pairing, the peer told `unpaired`.
const UNPAIR: &str = r#"
if not alive(me) then return {'fenced'} end
local a, ac = ARGV[7], ARGV[8]
local A = redis.call('HMGET', P .. 'c:' .. a, 'n', 'c')
if A[1] ~= me or A[2] ~= ac then return {'gone'} end
if not endpair(a, 'unpaired', true) then return {'not_paired', tail(me)} end
return {'ok', flush()}
"#;

/// ARGV[7] ID, [8] connection, [9] the reason its peer is told: the
/// connection ended. Its ID is freed, or reserved to its token.
const RELEASE: &str = r#"
if not alive(me) then return {'fenced'} end
local id, conn, reason = ARGV[7], ARGV[8], ARGV[9]
local k = P .. 'c:' .. id
local X = redis.call('HMGET', k, 'n', 'c', 't', 'a')
if X[1] ~= me or X[2] ~= conn then return {'gone'} end
endpair(id, reason, false)
redis.call('DEL', k)
redis.call('SREM', P .. 'n:' .. me, id)
redis.call('DECR', P .. 'nclients')
if X[3] and X[3] ~= '' then reserve(id, X[3], X[4] or '') end
return {'ok', flush()}
"#;

/// ARGV[7] batch size. Takes one dead incarnation (declared dead, or with
/// a heartbeat older than dead-after) and frees up to a batch of its
/// clients: each pairing ended (the survivor told `left`), each ID
/// reserved to its token. Every ID is popped once, so however many nodes
/// reap at once, each survivor is told once. The inbox goes with the last
/// client.
const REAP: &str = r#"
if not alive(me) then return {'fenced'} end
local batch = tonumber(ARGV[7])
local inc = redis.call('SRANDMEMBER', P .. 'dead')
if not inc then
  local stale = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', '(' .. (now - dead), 'LIMIT', 0, 1)
  if #stale == 0 then return {'idle'} end
  inc = stale[1]
  redis.call('ZREM', P .. 'nodes', inc)
  redis.call('SADD', P .. 'dead', inc)
end
local ids = redis.call('SPOP', P .. 'n:' .. inc, batch)
for _, id in ipairs(ids) do
  local k = P .. 'c:' .. id
  local X = redis.call('HMGET', k, 'n', 't', 'a')
  if X[1] == inc then
    endpair(id, 'left', false)
    redis.call('DEL', k)
    redis.call('DECR', P .. 'nclients')
    if X[2] and X[2] ~= '' then reserve(id, X[2], X[3] or '') end
  end
end
local left = redis.call('SCARD', P .. 'n:' .. inc)
if left == 0 then
  redis.call('SREM', P .. 'dead', inc)
  redis.call('DEL', P .. 'in:' .. inc)
end
flush()
return {'reaped', inc, tostring(#ids), tostring(left)}
"#;

/// The cluster's figures for `/metrics`: live nodes, clients, pairings,
/// reservations, reservations evicted and refused, incarnations still
/// being reaped (the order of `Shared` in mod.rs).
const STATS: &str = r#"
sweep()
local live = redis.call('ZCOUNT', P .. 'nodes', now - dead, '+inf')
return {tostring(live),
  redis.call('GET', P .. 'nclients') or '0',
  redis.call('GET', P .. 'npairs') or '0',
  tostring(redis.call('ZCARD', P .. 'rz')),
  redis.call('GET', P .. 'revicted') or '0',
  redis.call('GET', P .. 'rrefused') or '0',
  tostring(redis.call('SCARD', P .. 'dead'))}
"#;

/// The scripts, each with the prelude, loaded by SHA1 (`EVALSHA`, and
/// `EVAL` again after a Redis restart forgot them: redis-rs does both).
pub struct Scripts {
    pub join: Script,
    pub heartbeat: Script,
    pub leave: Script,
    pub claim: Script,
    pub pair: Script,
    pub unpair: Script,
    pub release: Script,
    pub reap: Script,
    pub stats: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Scripts {
            join: s(JOIN),
            heartbeat: s(HEARTBEAT),
            leave: s(LEAVE),
            claim: s(CLAIM),
            pair: s(PAIR),
            unpair: s(UNPAIR),
            release: s(RELEASE),
            reap: s(REAP),
            stats: s(STATS),
        }
    }
}
