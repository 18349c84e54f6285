-- Compare-and-set fill after a database load.
-- KEYS: entry, guard, lease
-- ARGV: generation read before the load, version loaded, encoded entry, ttl_ms, lease token
-- Returns 'ok', 'generation' (an invalidation happened since the load began),
-- 'stale' (version older than the tombstone floor) or 'older' (a newer entry is cached).
local function release()
  if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then
    redis.call('DEL', KEYS[3])
  end
end
local gen = redis.call('HGET', KEYS[2], 'g') or '0'
if gen ~= ARGV[1] then
  release()
  return 'generation'
end
local version = tonumber(ARGV[2])
local floor = tonumber(redis.call('HGET', KEYS[2], 'f') or '-1')
if version < floor then
  release()
  return 'stale'
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local cv = tonumber(string.match(cur, '^[vn](%d+)[|:]'))
  if cv and cv > version then
    release()
    return 'older'
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
release()
return 'ok'
