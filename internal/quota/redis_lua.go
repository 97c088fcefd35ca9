package quota

import (
	"strconv"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts of the Redis counter. Redis runs Lua 5.1, whose numbers
// are doubles: token counts are exact below 2^53, but a cost in pico-units
// is not (2^53 pico-units is only about 9,007 currency units). Costs
// therefore travel as decimal strings and are added, compared and divided
// in moneyLua as four base-10^6 limbs, exactly, saturating at MaxCost like
// the Go side. Every intermediate value of moneyLua stays below 2^53.

// moneyLua is exact non-negative int64 arithmetic on limbs {l1, l2, l3, l4},
// the value l1 + l2·10^6 + l3·10^12 + l4·10^18.
var moneyLua = `
local MB = 1000000
local MMAX = {775807, 36854, 223372, 9}
local MAXMODELS = ` + strconv.Itoa(MaxModels) + `
local function mparse(s)
  local m = {0, 0, 0, 0}
  if not s then return m end
  local i, n = 1, #s
  while n > 0 and i <= 4 do
    local from = math.max(n - 5, 1)
    m[i] = tonumber(string.sub(s, from, n))
    n, i = from - 1, i + 1
  end
  return m
end
local function mnum(v)
  local m = {0, 0, 0, 0}
  for i = 1, 4 do
    m[i] = v % MB
    v = (v - m[i]) / MB
  end
  return m
end
local function mzero(a) return a[1] == 0 and a[2] == 0 and a[3] == 0 and a[4] == 0 end
local function mcmp(a, b)
  for i = 4, 1, -1 do
    if a[i] ~= b[i] then
      if a[i] < b[i] then return -1 end
      return 1
    end
  end
  return 0
end
local function mfmt(a)
  local i = 4
  while i > 1 and a[i] == 0 do i = i - 1 end
  local s = string.format('%d', a[i])
  for j = i - 1, 1, -1 do s = s .. string.format('%06d', a[j]) end
  return s
end
local function msat(a)
  if mcmp(a, MMAX) > 0 then return {MMAX[1], MMAX[2], MMAX[3], MMAX[4]} end
  return a
end
local function madd(a, b)
  local m, c = {0, 0, 0, 0}, 0
  for i = 1, 4 do
    local v = a[i] + b[i] + c
    if v >= MB then m[i], c = v - MB, 1 else m[i], c = v, 0 end
  end
  if c > 0 then return {MMAX[1], MMAX[2], MMAX[3], MMAX[4]} end
  return msat(m)
end
-- msub returns a - b, or nil when b > a.
local function msub(a, b)
  if mcmp(a, b) < 0 then return nil end
  local m, c = {0, 0, 0, 0}, 0
  for i = 1, 4 do
    local v = a[i] - b[i] - c
    if v < 0 then m[i], c = v + MB, 1 else m[i], c = v, 0 end
  end
  return m
end
local function mmul(a, b)
  local r = {0, 0, 0, 0, 0, 0, 0, 0}
  for i = 1, 4 do
    local c = 0
    for j = 1, 4 do
      local v = r[i + j - 1] + a[i] * b[j] + c
      c = math.floor(v / MB)
      r[i + j - 1] = v - c * MB
    end
    r[i + 4] = c
  end
  for i = 5, 8 do
    if r[i] ~= 0 then return {MMAX[1], MMAX[2], MMAX[3], MMAX[4]} end
  end
  return msat({r[1], r[2], r[3], r[4]})
end
-- mdiv returns floor(a / p) for 0 < p < 10^14, digit by digit so that every
-- remainder stays below 10·p; past 2^53 it answers 2^53, which is more
-- output than any estimate asks for.
local function mdiv(a, p)
  local q, r = 0, 0
  for i = 4, 1, -1 do
    for k = 5, 0, -1 do
      r = r * 10 + math.floor(a[i] / 10 ^ k) % 10
      local d = math.floor(r / p)
      r = r - d * p
      q = q * 10 + d
      if q >= 9007199254740992 then return 9007199254740992 end
    end
  end
  return q
end
`

// liveLua loads the replicas whose lease has not expired into live, and
// counts reads one window hash: its used fields and the holds of live
// replicas, dropping the holds of dead ones when clean is true.
const liveLua = `
local function loadLive(leasesKey, now)
  local live = {}
  local lv = redis.call('HGETALL', leasesKey)
  for i = 1, #lv, 2 do
    if tonumber(lv[i + 1]) > now then live[lv[i]] = true end
  end
  return live
end
local function counts(key, live, clean)
  local h = redis.call('HGETALL', key)
  local c = {req = 0, inp = 0, cin = 0, out = 0, cost = mparse(nil), hreq = 0, hin = 0, hout = 0, hcost = mparse(nil)}
  local dead = {}
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    if f == 'req' then c.req = tonumber(v)
    elseif f == 'in' then c.inp = tonumber(v)
    elseif f == 'cin' then c.cin = tonumber(v)
    elseif f == 'out' then c.out = tonumber(v)
    elseif f == 'cost' then c.cost = mparse(v)
    else
      local kind, id = string.sub(f, 1, 1), string.sub(f, 3)
      if live[id] then
        if kind == 'q' then c.hreq = c.hreq + tonumber(v)
        elseif kind == 'i' then c.hin = c.hin + tonumber(v)
        elseif kind == 'o' then c.hout = c.hout + tonumber(v)
        elseif kind == 'c' then c.hcost = madd(c.hcost, mparse(v))
        end
      else
        dead[#dead + 1] = f
      end
    end
  end
  if clean and #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  return c
end
local function pushCounts(reply, c)
  reply[#reply + 1] = c.req
  reply[#reply + 1] = c.inp
  reply[#reply + 1] = c.cin
  reply[#reply + 1] = c.out
  reply[#reply + 1] = mfmt(c.cost)
  reply[#reply + 1] = c.hreq
  reply[#reply + 1] = c.hin
  reply[#reply + 1] = c.hout
  reply[#reply + 1] = mfmt(c.hcost)
end
local function inflight(key, live, clean)
  local h = redis.call('HGETALL', key)
  local n, dead = 0, {}
  for i = 1, #h, 2 do
    if live[h[i]] then n = n + tonumber(h[i + 1]) else dead[#dead + 1] = h[i] end
  end
  if clean and #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  return n
end
`

// modelsLua reads and writes a window's per-model split: the hash
// <window key>:models, one field per model, "req in cin out cost".
const modelsLua = `
local function unpackModel(v)
  local t = {}
  for w in string.gmatch(v or '', '%S+') do t[#t + 1] = w end
  local a = {tonumber(t[1]) or 0, tonumber(t[2]) or 0, tonumber(t[3]) or 0, tonumber(t[4]) or 0}
  return a, mparse(t[5])
end
local function packModel(a, cost)
  return string.format('%d %d %d %d ', a[1], a[2], a[3], a[4]) .. mfmt(cost)
end
-- modelField is the field a model's usage goes to: its own while fewer than
-- MAXMODELS models are named, else 'other'.
local function modelField(key, model)
  if model == '' then return 'other' end
  if model ~= 'other' and redis.call('HEXISTS', key, model) == 0 then
    if redis.call('HLEN', key) - redis.call('HEXISTS', key, 'other') >= MAXMODELS then return 'other' end
  end
  return model
end
`

// reserveScript checks and holds an estimate in every key, or in none.
//
//	KEYS:  one per distinct budget window, then the in-flight hash if
//	       ARGV[12] is 1, then the leases hash and the seeded marker
//	ARGV:  replica id, now (ms), lease (ms), output step,
//	       est req, est in, est out, est cost (the worst case, decimal),
//	       its input's cost (decimal), the output price, number of windows,
//	       1 if a concurrency limit applies, its limit, 1 if it is dry-run,
//	       one ttl (ms) per window,
//	       then per enforcing limit: window index (1-based), cap tokens,
//	       cap in, cap out, cap req (-1 = uncapped), cap cost (decimal,
//	       "-1" = uncapped)
//	reply: {-1} when unseeded; else {1 if reserved else 0, granted output,
//	       requests in flight before, then per window its state before the
//	       reservation (pushCounts)}
//
// The rule is the Go one in plan.go (rooms and fit, enforcing limits only);
// Go derives the Decision's details from the returned state.
var reserveScript = redis.NewScript(moneyLua + liveLua + `
local id, now, lease, step = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local est = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
local estCost, inCost, outPrice = mparse(ARGV[8]), mparse(ARGV[9]), tonumber(ARGV[10])
local costly = not mzero(estCost)
local n, hasConc = tonumber(ARGV[11]), ARGV[12] == '1'
local concLimit, concDry = tonumber(ARGV[13]), ARGV[14] == '1'
local leasesKey, marker = KEYS[#KEYS - 1], KEYS[#KEYS]
if redis.call('EXISTS', marker) == 0 then return {-1} end
local live = loadLive(leasesKey, now)
live[id] = true
redis.call('HSET', leasesKey, id, now + lease)
local state = {}
for i = 1, n do state[i] = counts(KEYS[i], live, true) end
local running = 0
if hasConc then running = inflight(KEYS[n + 1], live, true) end

local function fits(c, held, e)
  if c < 0 or (held < c and held + e <= c) then return math.huge end
  return -1
end
local minRoom = math.huge
for a = 15 + n, #ARGV - 5, 6 do
  local s = state[tonumber(ARGV[a])]
  local hreq, hin, hout = s.req + s.hreq, s.inp + s.hin, s.out + s.hout
  local ctok, cin, cout, creq = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local r = math.min(fits(cin, hin, est[2]), fits(creq, hreq, est[1]))
  if ctok >= 0 then
    if hin + hout < ctok then r = math.min(r, ctok - hin - hout - est[2]) else r = -1 end
  end
  if cout >= 0 then
    if hout < cout then r = math.min(r, cout - hout) else r = -1 end
  end
  if ARGV[a + 5] ~= '-1' and costly then
    local rem = msub(mparse(ARGV[a + 5]), madd(s.cost, s.hcost))
    if rem == nil or mzero(rem) then rem = nil else rem = msub(rem, inCost) end
    if rem == nil then
      r = math.min(r, -1)
    elseif outPrice > 0 then
      r = math.min(r, mdiv(rem, outPrice))
    end
  end
  if r < minRoom then minRoom = r end
end
local ok, grant = 1, est[3]
if minRoom < est[3] then
  if step <= 0 or minRoom < 0 then
    ok = 0
  else
    grant = math.floor(minRoom / step) * step
    if grant < step then ok = 0 end
  end
end
if ok == 1 and hasConc and not concDry and running >= concLimit then ok = 0 end
if ok == 1 then
  local grantCost = estCost
  if grant ~= est[3] then grantCost = madd(inCost, mmul(mnum(grant), mnum(outPrice))) end
  for i = 1, n do
    if est[1] ~= 0 then redis.call('HINCRBY', KEYS[i], 'q:' .. id, est[1]) end
    if est[2] ~= 0 then redis.call('HINCRBY', KEYS[i], 'i:' .. id, est[2]) end
    if grant ~= 0 then redis.call('HINCRBY', KEYS[i], 'o:' .. id, grant) end
    if not mzero(grantCost) then
      local f = 'c:' .. id
      redis.call('HSET', KEYS[i], f, mfmt(madd(mparse(redis.call('HGET', KEYS[i], f)), grantCost)))
    end
    redis.call('PEXPIRE', KEYS[i], ARGV[14 + i])
  end
  if hasConc then
    redis.call('HINCRBY', KEYS[n + 1], id, 1)
    redis.call('PEXPIRE', KEYS[n + 1], ` + strconv.FormatInt(inflightTTL.Milliseconds(), 10) + `)
  end
else
  grant = 0
end
local reply = {ok, grant, running}
for i = 1, n do pushCounts(reply, state[i]) end
return reply
`)

// settleScript releases this replica's hold and charges the actual usage,
// both in the windows the reservation was made in (their totals and their
// split by model), and adds it to each budget's lifetime. It runs at most
// once per reservation: its first run sets the reservation's settled key,
// and a retry that finds it does nothing. It refuses (-1) while the
// counters are not seeded, so a charge never lands in counters that a
// reseed would then overwrite.
//
//	KEYS:  one per distinct budget window of the reservation, then each
//	       window's models hash, then the in-flight hash if ARGV[12] is 1,
//	       then one lifetime hash per budget, then the recent set of the
//	       slot, the seeded marker and the reservation's settled key
//	ARGV:  replica id, held req, in, out, cost (decimal), actual req, in,
//	       cached in, out, cost (decimal), number of windows, 1 if an
//	       in-flight slot is held, the settled key's ttl (ms), the model,
//	       then per window: ttl (ms), then now (ms), how long the recent
//	       set keeps a mark (ms), and the reservation's marks
//	reply: 1 settled, 0 already settled, -1 not seeded
//
// A window key that no longer exists (expired) has nothing to release; an
// actual charge recreates it with its expiry, and records the reservation's
// marks in the recent set (scored by now), from which it drops the marks
// older than it keeps.
var settleScript = redis.NewScript(moneyLua + modelsLua + `
if redis.call('EXISTS', KEYS[#KEYS - 1]) == 0 then return -1 end
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', ARGV[13]) then return 0 end
local id = ARGV[1]
local held = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
local heldCost = mparse(ARGV[5])
local actual = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local actualCost = mparse(ARGV[10])
local nwin, hasConc, model = tonumber(ARGV[11]), ARGV[12] == '1', ARGV[14]
local hf = {'q:' .. id, 'i:' .. id, 'o:' .. id}
local uf = {'req', 'in', 'cin', 'out'}
local charge = not mzero(actualCost)
for j = 1, 4 do charge = charge or actual[j] ~= 0 end
local function release(key, field, d)
  if d <= 0 then return end
  local cur = tonumber(redis.call('HGET', key, field) or '0')
  if cur <= d then redis.call('HDEL', key, field) else redis.call('HINCRBY', key, field, -d) end
end
local function releaseCost(key, field, d)
  if mzero(d) then return end
  local left = msub(mparse(redis.call('HGET', key, field)), d)
  if left == nil or mzero(left) then redis.call('HDEL', key, field) else redis.call('HSET', key, field, mfmt(left)) end
end
local function add(key)
  for j = 1, 4 do
    if actual[j] ~= 0 then redis.call('HINCRBY', key, uf[j], actual[j]) end
  end
  if not mzero(actualCost) then
    redis.call('HSET', key, 'cost', mfmt(madd(mparse(redis.call('HGET', key, 'cost')), actualCost)))
  end
end
local function addModel(key)
  local f = modelField(key, model)
  local a, cost = unpackModel(redis.call('HGET', key, f))
  for j = 1, 4 do a[j] = a[j] + actual[j] end
  redis.call('HSET', key, f, packModel(a, madd(cost, actualCost)))
end
for i = 1, nwin do
  for j = 1, 3 do release(KEYS[i], hf[j], held[j]) end
  releaseCost(KEYS[i], 'c:' .. id, heldCost)
  if charge then
    add(KEYS[i])
    redis.call('PEXPIRE', KEYS[i], ARGV[14 + i])
    addModel(KEYS[nwin + i])
    redis.call('PEXPIRE', KEYS[nwin + i], ARGV[14 + i])
  end
end
local life = 2 * nwin + 1
if hasConc then
  release(KEYS[life], id, 1)
  life = life + 1
end
if charge then
  for i = life, #KEYS - 3 do add(KEYS[i]) end
  local a = 14 + nwin
  local now, keep, recent = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), KEYS[#KEYS - 2]
  if #ARGV > a + 2 then
    for i = a + 3, #ARGV do redis.call('ZADD', recent, now, ARGV[i]) end
    redis.call('ZREMRANGEBYSCORE', recent, '-inf', '(' .. (now - keep))
  end
end
return 1
`)

// statusScript reads windows without changing them.
//
//	KEYS:  one per window, then each window's models hash, then the leases
//	       hash
//	ARGV:  now (ms), replica id (whose holds count whatever its lease)
//	reply: per window its state (pushCounts), the number of models, and
//	       that many pairs of a model and its packed usage
var statusScript = redis.NewScript(moneyLua + liveLua + `
local live = loadLive(KEYS[#KEYS], tonumber(ARGV[1]))
live[ARGV[2]] = true
local n = (#KEYS - 1) / 2
local reply = {}
for i = 1, n do
  pushCounts(reply, counts(KEYS[i], live, false))
  local ms = redis.call('HGETALL', KEYS[n + i])
  reply[#reply + 1] = #ms / 2
  for j = 1, #ms do reply[#reply + 1] = ms[j] end
end
return reply
`)

// seedScript raises each used field of one window to at least the given
// value, and each model's share likewise.
//
//	KEYS: the budget window, its models hash
//	ARGV: req, in, cached in, out, cost (decimal), ttl (ms), then pairs of a
//	      model and its packed usage
var seedScript = redis.NewScript(moneyLua + modelsLua + `
local f = {'req', 'in', 'cin', 'out'}
local cur = redis.call('HMGET', KEYS[1], 'req', 'in', 'cin', 'out', 'cost')
local wrote = false
for j = 1, 4 do
  if tonumber(ARGV[j]) > (tonumber(cur[j]) or 0) then
    redis.call('HSET', KEYS[1], f[j], ARGV[j])
    wrote = true
  end
end
if mcmp(mparse(ARGV[5]), mparse(cur[5])) > 0 then
  redis.call('HSET', KEYS[1], 'cost', ARGV[5])
  wrote = true
end
if wrote then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
local seeded = false
for i = 7, #ARGV - 1, 2 do
  local model = ARGV[i]
  local have = redis.call('HGET', KEYS[2], model)
  if have or model == 'other' or redis.call('HLEN', KEYS[2]) - redis.call('HEXISTS', KEYS[2], 'other') < MAXMODELS then
    local a, cost = unpackModel(have)
    local b, bcost = unpackModel(ARGV[i + 1])
    for j = 1, 4 do a[j] = math.max(a[j], b[j]) end
    if mcmp(bcost, cost) > 0 then cost = bcost end
    redis.call('HSET', KEYS[2], model, packModel(a, cost))
    seeded = true
  end
end
if seeded then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
return 1
`)

// seedLifetimeScript raises each field of a lifetime hash to at least the
// given value.
//
//	KEYS: the lifetime hash
//	ARGV: req, in, cached in, out, cost (decimal)
var seedLifetimeScript = redis.NewScript(moneyLua + `
local f = {'req', 'in', 'cin', 'out'}
local cur = redis.call('HMGET', KEYS[1], 'req', 'in', 'cin', 'out', 'cost')
for j = 1, 4 do
  if tonumber(ARGV[j]) > (tonumber(cur[j]) or 0) then redis.call('HSET', KEYS[1], f[j], ARGV[j]) end
end
if mcmp(mparse(ARGV[5]), mparse(cur[5])) > 0 then redis.call('HSET', KEYS[1], 'cost', ARGV[5]) end
return 1
`)

// renewScript renews this replica's lease and forgets leases that expired
// long ago (their holds are dropped by the next Reserve either way).
//
//	KEYS: the leases hash
//	ARGV: replica id, now (ms), lease (ms)
var renewScript = redis.NewScript(`
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], now + lease)
local lv = redis.call('HGETALL', KEYS[1])
for i = 1, #lv, 2 do
  if tonumber(lv[i + 1]) < now - 100 * lease then redis.call('HDEL', KEYS[1], lv[i]) end
end
return 1
`)
