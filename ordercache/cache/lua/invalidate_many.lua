#!lua flags=allow-oom
-- invalidate.lua for many entries in one call (standalone and Sentinel only: in a
-- cluster the keys of one call must share a slot, so the service sends one call per
-- entry there). Same semantics per entry, applied in argument order.
-- KEYS: entry1, guard1, lease1, entry2, guard2, lease2, ...
-- ARGV: tombstone_ms, version1 ('' for none), version2, ...
-- Returns one 1/0 per entry: whether the entry was deleted.
local out = {}
local tomb = ARGV[1]
for i = 1, #KEYS / 3 do
  local entry, guard, lease = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local raw = ARGV[i + 1]
  redis.call('HINCRBY', guard, 'g', 1)
  local version = nil
  if raw ~= '' then
    version = tonumber(raw)
    local floor = tonumber(redis.call('HGET', guard, 'f') or '-1')
    if version > floor then
      redis.call('HSET', guard, 'f', raw)
    end
  end
  redis.call('PEXPIRE', guard, tomb)
  redis.call('DEL', lease)
  local deleted = 0
  local cur = redis.call('GET', entry)
  if cur then
    local keep = false
    if version then
      local cv = tonumber(string.match(cur, '^[vn](%d+)[|:]'))
      keep = cv ~= nil and cv >= version and string.sub(cur, 1, 1) == 'v'
    end
    if not keep then
      redis.call('DEL', entry)
      deleted = 1
    end
  end
  out[i] = deleted
end
return out
