-- Miss path: re-read the entry, read the fill generation, try to take the fill lease.
-- KEYS: entry, guard, lease   ARGV: token, lease_ms
-- Returns {entry or false, generation, 1 if the lease was taken else 0}.
local cur = redis.call('GET', KEYS[1])
local gen = redis.call('HGET', KEYS[2], 'g') or '0'
if cur then
  -- the generation too: a caller that finds the entry corrupt replaces it with a fill
  return {cur, gen, 0}
end
local ok = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
if ok then
  return {false, gen, 1}
end
return {false, gen, 0}
