"""The Lua scripts ``RedisStore`` runs, so each operation is one atomic round trip on Valkey or Redis.

Times come from the server (``TIME``, in microseconds: two writes in one millisecond still have an order),
so replicas whose clocks disagree still agree on what expired.
Every script runs on the keys it is given; the bounded space also deletes the data keys of the entries it
evicts (named from a prefix), so a space lives on one server, not across a Redis Cluster.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

#: KEYS: map, its expiry index; ARGV: field, value, time to live in ms ('' for none)
PUT_ENTRY = _NOW + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]) * 1000, ARGV[1])
end
return 1
"""

#: KEYS: map, its expiry index. Drops the expired fields, returns the rest (field, value, field, value, ...)
ENTRIES = _NOW + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, field in ipairs(dead) do
  redis.call('HDEL', KEYS[1], field)
end
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
return redis.call('HGETALL', KEYS[1])
"""

#: KEYS: map, its expiry index; ARGV: field
ENTRY = _NOW + """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if expires and tonumber(expires) <= now then
  return false
end
return redis.call('HGET', KEYS[1], ARGV[1])
"""

#: KEYS: lease; ARGV: holder, time to live in ms. 1 when taken or renewed, 0 when another holder has it
ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: KEYS: lease; ARGV: holder
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

#: KEYS: data, last-used index, expiry index, sizes, byte total; ARGV: member, value, time to live in ms, budget in
#: bytes, data key prefix. Forgets expired members, stores this one, evicts the least recently used beyond the
#: budget; returns how many were evicted
PUT_BOUNDED = _NOW + """
local total = tonumber(redis.call('GET', KEYS[5]) or '0') or 0
local function forget(member)
  local size = tonumber(redis.call('HGET', KEYS[4], member) or '0') or 0
  total = total - size
  redis.call('HDEL', KEYS[4], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
for _, member in ipairs(dead) do
  forget(member)
end
forget(ARGV[1])
local size = string.len(ARGV[2])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]) * 1000, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], size)
total = total + size
local evicted = 0
local budget = tonumber(ARGV[4])
while total > budget do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then
    break
  end
  forget(oldest[1])
  redis.call('DEL', ARGV[5] .. oldest[1])
  evicted = evicted + 1
end
if total < 0 then
  total = 0
end
redis.call('SET', KEYS[5], total)
return evicted
"""

#: KEYS: data, last-used index; ARGV: member
GET_BOUNDED = _NOW + """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
end
return value
"""
