#!lua
-- Append tracking records to one global shard stream, each at most once.
-- The "#!lua" line makes Redis check for OOM before the script starts, so a
-- script runs to the end or does not write at all.
--
-- KEYS[1] stream   KEYS[2] offsets (hash "topic:partition" -> last offset)
-- KEYS[3] seen     (zset event_id -> ms first mirrored)
-- ARGV[1] maxlen (0 = none)   ARGV[2] max age ms (0 = none)
-- ARGV[3] dedupe window ms (0 = off)   ARGV[4] watermark ttl ms   ARGV[5] n
-- then n records: event_id, "topic:partition", offset, npairs, field, value, ...
-- Returns {added, duplicates}.
local stream, offsets, seen = KEYS[1], KEYS[2], KEYS[3]
local maxlen = tonumber(ARGV[1])
local max_age = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local wm_ttl = tonumber(ARGV[4])
local n = tonumber(ARGV[5])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Numbers leave the script via string.format: never in exponent notation.
local now_s = string.format('%d', now)

local recs, eids, pks, pk_list = {}, {}, {}, {}
local pos = 6
for i = 1, n do
  local pk = ARGV[pos + 1]
  local npairs = tonumber(ARGV[pos + 3])
  recs[i] = {ARGV[pos], pk, tonumber(ARGV[pos + 2]), pos + 4, pos + 3 + 2 * npairs, ARGV[pos + 2]}
  eids[i] = ARGV[pos]
  if pks[pk] == nil then
    pks[pk] = false
    pk_list[#pk_list + 1] = pk
  end
  pos = pos + 4 + 2 * npairs
end

-- Watermarks: Kafka redelivery repeats offsets at or below them.
local marks = redis.call('HMGET', offsets, unpack(pk_list))
local hw, hw_s = {}, {}
for i, pk in ipairs(pk_list) do
  hw[pk] = tonumber(marks[i]) or -1
end

-- Recent event ids: the same event under another offset (producer retry).
local scores = {}
if window > 0 then
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. string.format('%d', now - window))
  scores = redis.call('ZMSCORE', seen, unpack(eids))
end

local added, dups, err = 0, 0, nil
local fresh, zargs, dirty = {}, {}, {}
for i = 1, n do
  local r = recs[i]
  local eid, pk, off = r[1], r[2], r[3]
  if off <= hw[pk] then
    dups = dups + 1
  elseif window > 0 and (scores[i] or fresh[eid]) then
    dups = dups + 1
    hw[pk], hw_s[pk] = off, r[6]
    dirty[pk] = true
  else
    local res = redis.pcall('XADD', stream, '*', unpack(ARGV, r[4], r[5]))
    if type(res) == 'table' and res.err then
      err = res.err
      break
    end
    added = added + 1
    hw[pk], hw_s[pk] = off, r[6]
    dirty[pk] = true
    fresh[eid] = true
    zargs[#zargs + 1] = now_s
    zargs[#zargs + 1] = eid
  end
end

-- State is written even after an error, for the prefix that was appended.
local hargs = {}
for pk, _ in pairs(dirty) do
  hargs[#hargs + 1] = pk
  hargs[#hargs + 1] = hw_s[pk]
end
if #hargs > 0 then
  redis.call('HSET', offsets, unpack(hargs))
  redis.call('PEXPIRE', offsets, wm_ttl)
end
if window > 0 and #zargs > 0 then
  redis.call('ZADD', seen, unpack(zargs))
  redis.call('PEXPIRE', seen, window)
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
return {added, dups}
