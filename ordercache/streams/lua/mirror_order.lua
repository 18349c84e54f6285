#!lua
-- Append tracking records of one order to its per-order stream, each at most once.
-- Same idea as mirror_shard.lua, in the order's slot: one hash holds both the
-- per-partition watermarks ("p:topic:partition" -> offset) and the recent event
-- ids ("e:event_id" -> ms), and expires with the stream.
--
-- KEYS[1] stream   KEYS[2] state hash
-- ARGV[1] maxlen   ARGV[2] ttl ms   ARGV[3] dedupe window ms (0 = off)
-- ARGV[4] state size that triggers pruning of expired event ids   ARGV[5] n
-- then n records: event_id, "topic:partition", offset, npairs, field, value, ...
-- Returns {added, duplicates}.
local stream, state = KEYS[1], KEYS[2]
local maxlen = ARGV[1]
local ttl = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local prune_at = tonumber(ARGV[4])
local n = tonumber(ARGV[5])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - window
-- Numbers leave the script via string.format: never in exponent notation.
local now_s = string.format('%d', now)

local recs, names, pks = {}, {}, {}
local pos = 6
for i = 1, n do
  local pk = 'p:' .. ARGV[pos + 1]
  local npairs = tonumber(ARGV[pos + 3])
  recs[i] = {'e:' .. ARGV[pos], pk, tonumber(ARGV[pos + 2]), pos + 4, pos + 3 + 2 * npairs, ARGV[pos + 2]}
  names[#names + 1] = recs[i][1]
  if pks[pk] == nil then
    pks[pk] = true
    names[#names + 1] = pk
  end
  pos = pos + 4 + 2 * npairs
end

local vals = redis.call('HMGET', state, unpack(names))
local known = {}
for i, name in ipairs(names) do
  known[name] = tonumber(vals[i])
end

local added, dups, err = 0, 0, nil
local hargs, mark_s = {}, {}
for i = 1, n do
  local r = recs[i]
  local ename, pk, off = r[1], r[2], r[3]
  local mark = known[pk] or -1
  local seen_at = known[ename]
  if off <= mark then
    dups = dups + 1
  elseif window > 0 and seen_at and seen_at >= cutoff then
    dups = dups + 1
    known[pk], mark_s[pk] = off, r[6]
  else
    local res = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, r[4], r[5]))
    if type(res) == 'table' and res.err then
      err = res.err
      break
    end
    added = added + 1
    known[pk], mark_s[pk] = off, r[6]
    known[ename] = now
    if window > 0 then
      hargs[#hargs + 1] = ename
      hargs[#hargs + 1] = now_s
    end
  end
end

for pk, s in pairs(mark_s) do
  hargs[#hargs + 1] = pk
  hargs[#hargs + 1] = s
end
if #hargs > 0 then
  redis.call('HSET', state, unpack(hargs))
  redis.call('PEXPIRE', state, ttl)
end
if added > 0 then
  redis.call('PEXPIRE', stream, ttl)
end

-- A long-lived, busy order: forget event ids that left the dedupe window.
if #hargs > 0 and redis.call('HLEN', state) > prune_at then
  local all = redis.call('HGETALL', state)
  local stale = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'e:' and tonumber(all[i + 1]) < cutoff then
      stale[#stale + 1] = all[i]
    end
  end
  if #stale > 0 then
    redis.call('HDEL', state, unpack(stale))
  end
end

if err then
  return redis.error_reply(err)
end
return {added, dups}
