#!lua flags=allow-oom
-- Invalidate an entry and leave a version tombstone.
-- KEYS: entry, guard, lease   ARGV: version ('' when the event has none), tombstone_ms
-- Bumps the fill generation (voids every fill whose load began before now), raises the
-- floor to the version, drops the lease, and deletes the entry unless it already holds
-- this version or a newer one (a replayed old event never costs a miss).
-- Returns 1 if the entry was deleted, 0 otherwise.
redis.call('HINCRBY', KEYS[2], 'g', 1)
local version = nil
if ARGV[1] ~= '' then
  version = tonumber(ARGV[1])
  local floor = tonumber(redis.call('HGET', KEYS[2], 'f') or '-1')
  if version > floor then
    redis.call('HSET', KEYS[2], 'f', ARGV[1])
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
local cur = redis.call('GET', KEYS[1])
if not cur then
  return 0
end
if version then
  local cv = tonumber(string.match(cur, '^[vn](%d+)[|:]'))
  if cv and cv >= version and string.sub(cur, 1, 1) == 'v' then
    return 0
  end
end
redis.call('DEL', KEYS[1])
return 1
