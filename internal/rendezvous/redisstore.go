package rendezvous

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/redis/go-redis/v9"
)

// Registrations in Redis, shared by every relay of a cluster.
//
// Layout (P is the key prefix). Each namespace lives under its own hash
// tag, so Redis Cluster shards by namespace and every per-namespace script
// touches one slot; the tag is a hash of the namespace because a namespace
// may contain '{' or '}':
//
//	P rv{<ns tag>}:ids  zset  peer -> id (the cookie order)
//	P rv{<ns tag>}:exp  zset  peer -> expiry (ms)
//	P rv{<ns tag>}:reg  hash  peer -> "<expiry ms>:" then the signed peer record
//	P rv{<ns tag>}:ctr  string, the namespace's id counter
//
// Ids come from the namespace's counter, so a cookie handed out by one
// relay pages correctly at any other. Each id is the larger of the last
// one + 1 and Redis's clock in microseconds (~2^51; scores are doubles,
// exact below 2^53): ids follow the clock, so the counter can be deleted
// when its namespace empties (nothing is left behind per namespace, which
// an attacker cycling through fresh namespaces would otherwise pile up)
// and a new one still continues above every id handed out before. Redis
// 7.0 has no per-field expiry (HEXPIRE), so expired members are dropped by
// every script that touches the namespace and by the sweep, and the keys
// themselves expire MaxTTL after the namespace's last registration, when
// everything in them has expired.
//
// The budgets (per peer, per source prefix, in total) live under one more
// tag, P rv{b}:..., updated by one script per registration so that they
// count across the cluster. That slot keeps each registration's size,
// source, peer and expiry, so it expires registrations by itself without
// reading the namespaces. A register runs the budget script first (check,
// evict, count) and then the namespace script; the two are not one
// transaction (Cluster cannot run one script over two slots): if the second
// fails, the first is undone, and what is left over expires with its TTL.
//
// Eviction follows the in-memory store: the oldest registration of the
// largest peer of the largest source prefix, or of the largest peer in the
// sender's prefix, gives way; ties between equal holders may be broken
// differently.

// nsTagLen is the length of a namespace's hash tag (hex of 16 bytes).
const nsTagLen = 32

// redisKeyTTL outlives every registration (TTL at most MaxTTL), so keys
// vanish only after everything in them has expired.
const redisKeySlack = time.Hour

type redisBackend struct {
	rdb    redis.UniversalClient
	prefix string
	lim    limits
	keyTTL time.Duration
}

func newRedisBackend(rdb redis.UniversalClient, prefix string, lim limits, maxTTL time.Duration) *redisBackend {
	return &redisBackend{rdb: rdb, prefix: prefix, lim: lim, keyTTL: maxTTL + redisKeySlack}
}

func (r *redisBackend) engine() string { return "redis" }

func unavailable(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func (r *redisBackend) ping(ctx context.Context) error {
	return unavailable(r.rdb.Ping(ctx).Err())
}

func nsTag(ns string) string {
	sum := sha256.Sum256([]byte(ns))
	return hex.EncodeToString(sum[:nsTagLen/2])
}

// nsKeys are the keys of the namespace with tag tag: ids, exp, reg, ctr.
func (r *redisBackend) nsKeys(tag string) []string {
	b := r.prefix + "rv{" + tag + "}:"
	return []string{b + "ids", b + "exp", b + "reg", b + "ctr"}
}

// budgetBase starts every budget key; dynamic keys are built from it in
// the scripts (same hash tag, so the same slot).
func (r *redisBackend) budgetBase() string { return r.prefix + "rv{b}:" }

func (r *redisBackend) budgetKeys() []string {
	b := r.budgetBase()
	return []string{b + "info", b + "exp", b + "tot", b + "pc", b + "pb", b + "srcz", b + "gc"}
}

// regID names a registration in the budget slot: namespace tag, then peer.
func regID(tag string, p peer.ID) string { return tag + p.String() }

func ms(t time.Time) int64 { return t.UnixMilli() }

// budgetLib is shared by the budget scripts: drop removes one registration
// from every budget, cleanup drops those expired at now.
const budgetLib = `
local base = ARGV[1]
local now = tonumber(ARGV[2])
local function K(n) return base .. n end
local ttl = tonumber(ARGV[3])
local function touch(k)
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
local function drop(regid)
  local raw = redis.call('HGET', K('info'), regid)
  if not raw then return nil end
  local r = cmsgpack.unpack(raw)
  local size, src, p = r[1], r[2], r[3]
  redis.call('HDEL', K('info'), regid)
  redis.call('ZREM', K('exp'), regid)
  redis.call('HINCRBY', K('tot'), 'bytes', -size)
  redis.call('HINCRBY', K('tot'), 'count', -1)
  if redis.call('HINCRBY', K('pc'), p, -1) <= 0 then redis.call('HDEL', K('pc'), p) end
  if redis.call('HINCRBY', K('pb'), p, -size) <= 0 then redis.call('HDEL', K('pb'), p) end
  if tonumber(redis.call('ZINCRBY', K('srcz'), -size, src)) <= 0 then redis.call('ZREM', K('srcz'), src) end
  local sp = K('sp:' .. src)
  if tonumber(redis.call('ZINCRBY', sp, -size, p)) <= 0 then redis.call('ZREM', sp, p) end
  redis.call('ZREM', K('age:' .. src .. '|' .. p), regid)
  redis.call('SREM', K('pr:' .. p), regid)
  return r
end
local function cleanup(limit)
  local gone = redis.call('ZRANGEBYSCORE', K('exp'), '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(gone) do
    drop(id)
    -- The namespace slot still holds it: the sweep removes it there.
    redis.call('ZADD', K('gc'), now, id)
  end
  if #gone > 0 then touch(K('gc')) end
  return #gone
end
`

// budgetAdd checks and counts one registration, evicting from the largest
// holders when a shared budget is full. ARGV: base, now, keyttl, regid,
// size, src, peer, expiry, ns, maxPerPeer, maxTotal, maxBytes,
// maxPeerBytes, maxSrcBytes. Returns {status, replaced, then regid, ns,
// src, peer of every evicted registration}.
var budgetAdd = redis.NewScript(budgetLib + `
cleanup(64)
local regid, size, src, p = ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local expiry, ns = tonumber(ARGV[8]), ARGV[9]
local maxPerPeer, maxTotal = tonumber(ARGV[10]), tonumber(ARGV[11])
local maxBytes, maxPeerBytes, maxSrcBytes = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local oldraw = redis.call('HGET', K('info'), regid)
local old = nil
if oldraw then old = cmsgpack.unpack(oldraw) end
local freed, freedSrc = 0, 0
if old then
  freed = old[1]
  if old[2] == src then freedSrc = freed end
end
local out = {'OK', 0}
if old then out[2] = 1 end
if not old and tonumber(redis.call('HGET', K('pc'), p) or '0') >= maxPerPeer then return {'PEERLIMIT', 0} end
if maxPeerBytes > 0 and tonumber(redis.call('HGET', K('pb'), p) or '0') - freed + size > maxPeerBytes then return {'PEERBYTES', 0} end
local function srcBytes(s) return tonumber(redis.call('ZSCORE', K('srcz'), s) or '0') end
local function peerIn(s, q) return tonumber(redis.call('ZSCORE', K('sp:' .. s), q) or '0') end
local function total(f) return tonumber(redis.call('HGET', K('tot'), f) or '0') end
local function check()
  if maxSrcBytes > 0 and srcBytes(src) - freedSrc + size > maxSrcBytes then return 'SRCFULL' end
  if maxBytes > 0 and total('bytes') - freed + size > maxBytes then return 'NOMEM' end
  if not old and total('count') >= maxTotal then return 'FULL' end
  return nil
end
local evictions = 0
local over = check()
while over do
  if evictions >= 64 then out[1] = over; return out end
  local sAfter = srcBytes(src) - freedSrc + size
  local pAfter = peerIn(src, p) - freedSrc + size
  local vsrc, vpeer = nil, nil
  local top = redis.call('ZREVRANGE', K('srcz'), 0, 0, 'WITHSCORES')
  if over ~= 'SRCFULL' and top[1] and top[1] ~= src and tonumber(top[2]) > sAfter then
    vsrc = top[1]
    vpeer = redis.call('ZREVRANGE', K('sp:' .. vsrc), 0, 0)[1]
  else
    local tp = redis.call('ZREVRANGE', K('sp:' .. src), 0, 0, 'WITHSCORES')
    if tp[1] and tp[1] ~= p and tonumber(tp[2]) > pAfter then
      vsrc, vpeer = src, tp[1]
    end
  end
  if not vpeer or vpeer == p then out[1] = over; return out end
  local oldest = redis.call('ZRANGE', K('age:' .. vsrc .. '|' .. vpeer), 0, 0)[1]
  if not oldest then out[1] = over; return out end
  local r = drop(oldest)
  evictions = evictions + 1
  table.insert(out, oldest)
  table.insert(out, r[4])
  table.insert(out, r[2])
  table.insert(out, r[3])
  over = check()
end
if old then drop(regid) end
local seq = redis.call('HINCRBY', K('tot'), 'seq', 1)
redis.call('HSET', K('info'), regid, cmsgpack.pack({size, src, p, ns, seq}))
redis.call('ZADD', K('exp'), expiry, regid)
redis.call('HINCRBY', K('tot'), 'bytes', size)
redis.call('HINCRBY', K('tot'), 'count', 1)
redis.call('HINCRBY', K('pc'), p, 1)
redis.call('HINCRBY', K('pb'), p, size)
redis.call('ZINCRBY', K('srcz'), size, src)
redis.call('ZINCRBY', K('sp:' .. src), size, p)
redis.call('ZADD', K('age:' .. src .. '|' .. p), seq, regid)
redis.call('SADD', K('pr:' .. p), regid)
for _, k in ipairs({K('info'), K('exp'), K('tot'), K('pc'), K('pb'), K('srcz'), K('sp:' .. src), K('age:' .. src .. '|' .. p), K('pr:' .. p)}) do
  touch(k)
end
return out
`)

// budgetDrop removes registrations from the budgets. ARGV: base, now,
// keyttl, then regids; with the single regid "*" and a peer in ARGV[5],
// every registration of that peer. Returns the regids removed.
var budgetDrop = redis.NewScript(budgetLib + `
local ids = {}
if ARGV[4] == '*' then
  ids = redis.call('SMEMBERS', K('pr:' .. ARGV[5]))
else
  for i = 4, #ARGV do table.insert(ids, ARGV[i]) end
end
local out = {}
for _, id in ipairs(ids) do
  if drop(id) then table.insert(out, id) end
end
return out
`)

// budgetSweep drops up to ARGV[4] expired registrations and returns
// {dropped, count, bytes, then up to ARGV[4] regids expired from the
// budgets that their namespaces may still hold}.
var budgetSweep = redis.NewScript(budgetLib + `
local limit = tonumber(ARGV[4])
local n = cleanup(limit)
local out = {n, tonumber(redis.call('HGET', K('tot'), 'count') or '0'), tonumber(redis.call('HGET', K('tot'), 'bytes') or '0')}
if limit > 0 then
  local g = redis.call('ZPOPMIN', K('gc'), limit)
  for i = 1, #g, 2 do table.insert(out, g[i]) end
end
return out
`)

// nsLib drops a namespace's members (KEYS: ids, exp, reg, ctr); the
// counter goes with the last one.
const nsLib = `
local function nsremove(q)
  redis.call('ZREM', KEYS[2], q)
  redis.call('HDEL', KEYS[3], q)
  local n = redis.call('ZREM', KEYS[1], q)
  if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[4]) end
  return n
end
local function nscleanup(now, limit)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
  for _, q in ipairs(gone) do nsremove(q) end
end
`

// nsAdd stores one registration. ARGV: peer, record, expiry, now,
// keyttl. Returns the id.
var nsAdd = redis.NewScript(nsLib + `
local p, now, ttl = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
nscleanup(now, 64)
local t = redis.call('TIME')
local id = math.max(tonumber(redis.call('GET', KEYS[4]) or '0') + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('SET', KEYS[4], string.format('%d', id))
redis.call('ZADD', KEYS[1], id, p)
redis.call('ZADD', KEYS[2], ARGV[3], p)
redis.call('HSET', KEYS[3], p, ARGV[3] .. ':' .. ARGV[2])
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return id
`)

// nsDel removes peer ARGV[1]; returns how many were removed (0 or 1).
var nsDel = redis.NewScript(nsLib + `
return nsremove(ARGV[1])
`)

// nsExpire removes peer ARGV[1] if its registration expired at ARGV[2]
// (a fresh re-registration stays).
var nsExpire = redis.NewScript(nsLib + `
local e = redis.call('ZSCORE', KEYS[2], ARGV[1])
if e and tonumber(e) <= tonumber(ARGV[2]) then return nsremove(ARGV[1]) end
return 0
`)

// nsDiscover pages the namespace. ARGV: after, limit, maxBytes, now,
// namespace length. Returns {id, expiry, record, ...}; ids and expiries
// as Redis formats scores.
var nsDiscover = redis.NewScript(nsLib + `
local limit, maxBytes, now, nslen = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
nscleanup(now, 128)
local ctr = tonumber(redis.call('GET', KEYS[4]) or '0')
local cursor = ARGV[1]
-- A cookie beyond anything issued (forged, or from before the counter
-- was lost): serve from the start, as the in-memory store does.
if tonumber(cursor) > ctr then cursor = '0' end
local out, n, size = {}, 0, 0
for round = 1, 16 do
  local batch = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, limit - n)
  if #batch == 0 then break end
  -- One read for the page: the expiry is stored with the record.
  local peers = {}
  for i = 1, #batch, 2 do table.insert(peers, batch[i]) end
  local vals = redis.call('HMGET', KEYS[3], unpack(peers))
  for i = 1, #batch, 2 do
    local id = batch[i + 1]
    cursor = id
    local v = vals[(i + 1) / 2]
    local c = v and string.find(v, ':', 1, true)
    local exp, rec = nil, nil
    if c then exp, rec = string.sub(v, 1, c - 1), string.sub(v, c + 1) end
    if exp and tonumber(exp) > now then
      local sz = nslen + #rec + 32
      if n > 0 and size + sz > maxBytes then return out end
      size = size + sz
      n = n + 1
      table.insert(out, id)
      table.insert(out, exp)
      table.insert(out, rec)
    end
  end
  if n >= limit then break end
end
return out
`)

func (r *redisBackend) add(ctx context.Context, p peer.ID, src netip.Prefix, ns string, record []byte, expires, now time.Time) (bool, []evictedReg, error) {
	tag := nsTag(ns)
	id := regID(tag, p)
	keyTTL := r.keyTTL.Milliseconds()
	res, err := budgetAdd.Run(ctx, r.rdb, r.budgetKeys(),
		r.budgetBase(), ms(now), keyTTL, id, entrySize(ns, record), src.String(), p.String(), ms(expires), ns,
		r.lim.maxPerPeer, r.lim.maxTotal, r.lim.maxBytes, r.lim.maxPeerBytes, r.lim.maxSrcBytes).Slice()
	if err != nil {
		return false, nil, unavailable(err)
	}
	if len(res) < 2 {
		return false, nil, unavailable(errors.New("budget script: short reply"))
	}
	status, _ := res[0].(string)
	replaced := res[1] == int64(1)
	var evicted []evictedReg
	for i := 2; i+3 < len(res); i += 4 {
		vid, _ := res[i].(string)
		vns, _ := res[i+1].(string)
		vsrc, _ := res[i+2].(string)
		vpeer, _ := res[i+3].(string)
		e := evictedReg{ns: vns}
		e.peer, _ = peer.Decode(vpeer)
		e.src, _ = netip.ParsePrefix(vsrc)
		evicted = append(evicted, e)
		if len(vid) > nsTagLen {
			// Best effort: an evicted registration left in its namespace
			// is no longer counted and expires with its TTL.
			_ = nsDel.Run(ctx, r.rdb, r.nsKeys(vid[:nsTagLen]), vid[nsTagLen:]).Err()
		}
	}
	switch status {
	case "OK":
	case "PEERLIMIT":
		return false, evicted, errPeerLimit
	case "PEERBYTES":
		return false, evicted, errPeerBytes
	case "SRCFULL":
		return false, evicted, errSourceFull
	case "NOMEM":
		return false, evicted, errNoMemory
	case "FULL":
		return false, evicted, errFull
	default:
		return false, evicted, unavailable(fmt.Errorf("budget script: status %q", status))
	}
	if err := nsAdd.Run(ctx, r.rdb, r.nsKeys(tag), p.String(), record, ms(expires), ms(now), keyTTL).Err(); err != nil {
		// Undo the budget so a failed register does not hold it; if this
		// fails too, the count expires with the registration's TTL.
		_ = budgetDrop.Run(context.WithoutCancel(ctx), r.rdb, r.budgetKeys(), r.budgetBase(), ms(now), keyTTL, id).Err()
		return false, evicted, unavailable(err)
	}
	return replaced, evicted, nil
}

func (r *redisBackend) unregister(ctx context.Context, p peer.ID, ns string) (int, error) {
	keyTTL := r.keyTTL.Milliseconds()
	now := ms(time.Now())
	if ns != "" {
		tag := nsTag(ns)
		n, err := nsDel.Run(ctx, r.rdb, r.nsKeys(tag), p.String()).Int()
		if err != nil {
			return 0, unavailable(err)
		}
		if err := budgetDrop.Run(ctx, r.rdb, r.budgetKeys(), r.budgetBase(), now, keyTTL, regID(tag, p)).Err(); err != nil {
			return n, unavailable(err)
		}
		return n, nil
	}
	ids, err := budgetDrop.Run(ctx, r.rdb, r.budgetKeys(), r.budgetBase(), now, keyTTL, "*", p.String()).StringSlice()
	if err != nil {
		return 0, unavailable(err)
	}
	n := 0
	for _, id := range ids {
		if len(id) <= nsTagLen {
			continue
		}
		k, err := nsDel.Run(ctx, r.rdb, r.nsKeys(id[:nsTagLen]), id[nsTagLen:]).Int()
		if err != nil {
			return n, unavailable(err)
		}
		n += k
	}
	return n, nil
}

func (r *redisBackend) discover(ctx context.Context, ns string, after uint64, limit, maxBytes int, now time.Time) ([]hit, error) {
	if ns == "" {
		return nil, errDiscoverAll
	}
	res, err := nsDiscover.Run(ctx, r.rdb, r.nsKeys(nsTag(ns)),
		strconv.FormatUint(after, 10), limit, maxBytes, ms(now), len(ns)).Slice()
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]hit, 0, len(res)/3)
	for i := 0; i+2 < len(res); i += 3 {
		ids, _ := res[i].(string)
		exps, _ := res[i+1].(string)
		rec, _ := res[i+2].(string)
		id, err1 := strconv.ParseFloat(ids, 64)
		exp, err2 := strconv.ParseFloat(exps, 64)
		if err1 != nil || err2 != nil {
			return nil, unavailable(fmt.Errorf("discover script: bad score %q/%q", ids, exps))
		}
		out = append(out, hit{id: uint64(id), ns: ns, record: []byte(rec), expires: time.UnixMilli(int64(exp))})
	}
	return out, nil
}

// expire drops expired registrations from the budgets, then from their
// namespaces (which otherwise drop them only when touched, or when their
// keys expire MaxTTL after the last registration: with short TTLs that
// could hold many times the budget).
func (r *redisBackend) expire(ctx context.Context, now time.Time) (int, error) {
	const batch = 1024
	total := 0
	for range 64 {
		res, err := budgetSweep.Run(ctx, r.rdb, r.budgetKeys(), r.budgetBase(), ms(now), r.keyTTL.Milliseconds(), batch).Slice()
		if err != nil {
			return total, unavailable(err)
		}
		if len(res) < 3 {
			return total, unavailable(errors.New("sweep script: short reply"))
		}
		n, _ := res[0].(int64)
		total += int(n)
		for _, v := range res[3:] {
			id, _ := v.(string)
			if len(id) <= nsTagLen {
				continue
			}
			if err := nsExpire.Run(ctx, r.rdb, r.nsKeys(id[:nsTagLen]), id[nsTagLen:], ms(now)).Err(); err != nil {
				return total, unavailable(err)
			}
		}
		if n < batch && len(res)-3 < batch {
			break
		}
	}
	return total, nil
}

func (r *redisBackend) stats(ctx context.Context, now time.Time) (int, int, error) {
	res, err := budgetSweep.Run(ctx, r.rdb, r.budgetKeys(), r.budgetBase(), ms(now), r.keyTTL.Milliseconds(), 0).Int64Slice()
	if err != nil {
		return 0, 0, unavailable(err)
	}
	return int(res[1]), int(res[2]), nil
}
