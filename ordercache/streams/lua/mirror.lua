#!lua
-- Mirror tracking records of one shard, each at most once, into the shard's global
-- stream and into each record's per-order stream. Every key lives in the shard's
-- slot (hash tag), so one atomic script decides "new or duplicate" for both.
-- "#!lua" makes Redis refuse the script under OOM *before* it writes anything.
--
-- KEYS[1] global shard stream   KEYS[2] offsets (hash "topic:partition" -> offset)
-- KEYS[3] seen (zset event_id -> ms first mirrored)   KEYS[4..] per-order streams
-- ARGV[1] global maxlen (0 = none)   ARGV[2] global max age ms (0 = none)
-- ARGV[3] dedupe window ms (0 = off)   ARGV[4] watermark ttl ms
-- ARGV[5] per-order maxlen   ARGV[6] per-order ttl ms   ARGV[7] n records, then each:
--   event_id, "topic:partition", offset, index of its order stream in KEYS,
--   npairs, field, value, ...
-- Returns {added, duplicates, per-order failures, first per-order error or ""}.
local stream, offsets, seen = KEYS[1], KEYS[2], KEYS[3]
local maxlen = tonumber(ARGV[1])
local max_age = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local wm_ttl = ARGV[4]
local order_maxlen = ARGV[5]
local order_ttl = ARGV[6]
local n = tonumber(ARGV[7])

-- Lua's unpack() is limited by the C stack: long argument lists go in slices.
local STEP = 1000
local function sliced(cmd, key, list)
  for i = 1, #list, STEP do
    redis.call(cmd, key, unpack(list, i, math.min(i + STEP - 1, #list)))
  end
end
local function sliced_reply(cmd, key, list)
  local out = {}
  for i = 1, #list, STEP do
    local part = redis.call(cmd, key, unpack(list, i, math.min(i + STEP - 1, #list)))
    for j = 1, #part do
      out[i + j - 1] = part[j]
    end
  end
  return out
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Numbers leave the script via string.format: never in exponent notation.
local now_s = string.format('%d', now)

local recs, eids, pks, pk_list = {}, {}, {}, {}
local pos = 8
for i = 1, n do
  local pk = ARGV[pos + 1]
  local last = pos + 4 + 2 * tonumber(ARGV[pos + 4])
  -- {event_id, source, offset, order key index, first pair, last pair, offset text}
  recs[i] = {ARGV[pos], pk, tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]), pos + 5, last,
             ARGV[pos + 2]}
  eids[i] = ARGV[pos]
  if pks[pk] == nil then
    pks[pk] = true
    pk_list[#pk_list + 1] = pk
  end
  pos = last + 1
end

-- Watermarks: a Kafka redelivery repeats offsets at or below them.
local marks = sliced_reply('HMGET', offsets, pk_list)
local hw, hw_s = {}, {}
for i, pk in ipairs(pk_list) do
  hw[pk] = tonumber(marks[i]) or -1
end

-- Recent event ids: the same event under another offset (a producer retry).
local scores = {}
if window > 0 then
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. string.format('%d', now - window))
  scores = sliced_reply('ZMSCORE', seen, eids)
end

local added, dups, order_failed, err, order_err = 0, 0, 0, nil, nil
local fresh, zargs, touched = {}, {}, {}
for i = 1, n do
  local r = recs[i]
  local eid, pk, off = r[1], r[2], r[3]
  if off <= hw[pk] then
    dups = dups + 1
  elseif window > 0 and (scores[i] or fresh[eid]) then
    dups = dups + 1
    hw[pk], hw_s[pk] = off, r[7]
  else
    local id = redis.pcall('XADD', stream, '*', unpack(ARGV, r[5], r[6]))
    if type(id) == 'table' and id.err then
      err = id.err
      break
    end
    added = added + 1
    hw[pk], hw_s[pk] = off, r[7]
    if window > 0 then
      fresh[eid] = true
      zargs[#zargs + 1] = now_s
      zargs[#zargs + 1] = eid
    end
    -- The per-order entry takes the global entry's id (ids of one shard only grow),
    -- so a reader can match the two; '*' if that order stream is somehow ahead.
    local okey = KEYS[r[4]]
    local res = redis.pcall('XADD', okey, 'MAXLEN', '~', order_maxlen, id, unpack(ARGV, r[5], r[6]))
    if type(res) == 'table' and res.err then
      res = redis.pcall('XADD', okey, 'MAXLEN', '~', order_maxlen, '*', unpack(ARGV, r[5], r[6]))
    end
    if type(res) == 'table' and res.err then
      -- Not a stream (someone wrote there): the global entry stands; report it.
      order_failed = order_failed + 1
      order_err = order_err or res.err
    else
      touched[okey] = true
    end
  end
end

-- State is written even after an error, for the prefix that was appended.
local hargs = {}
for pk, s in pairs(hw_s) do
  hargs[#hargs + 1] = pk
  hargs[#hargs + 1] = s
end
if #hargs > 0 then
  sliced('HSET', offsets, hargs)
  redis.call('PEXPIRE', offsets, wm_ttl)
end
if #zargs > 0 then
  sliced('ZADD', seen, zargs)
  redis.call('PEXPIRE', seen, window)
end
for okey, _ in pairs(touched) do
  redis.call('PEXPIRE', okey, order_ttl)
end
if added > 0 then
  if maxlen > 0 then
    redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  end
  if max_age > 0 then
    redis.call('XTRIM', stream, 'MINID', '~', string.format('%d', now - max_age))
  end
end
if err then
  return redis.error_reply(err)
end
return {added, dups, order_failed, order_err or ''}
