#!lua flags=allow-oom
-- Version-guarded write-through (refresh from an event, or an explicit set).
-- KEYS: entry, guard, lease   ARGV: version, encoded entry, ttl_ms, tombstone_ms
-- Writes only if the version is not older than the floor and newer than the cached
-- entry; then bumps the generation and floor so in-flight fills of older data lose.
-- Returns 1 if written, 0 if ignored (duplicate or older).
local version = tonumber(ARGV[1])
local floor = tonumber(redis.call('HGET', KEYS[2], 'f') or '-1')
if version < floor then
  return 0
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local cv = tonumber(string.match(cur, '^[vn](%d+)[|:]'))
  if cv and cv >= version and string.sub(cur, 1, 1) == 'v' then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'g', 1)
if version > floor then
  redis.call('HSET', KEYS[2], 'f', ARGV[1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
