"""The Lua scripts RedisBudget (promptgrid.quota.shared) changes its shared state with, each atomic.

Every script reads Redis TIME, so every process judges time by one clock; times are microseconds of it
(exact in a Lua double until the year 2255).
"""

# KEYS: window, paused_until, creates_paused_until. ARGV: limit, window_us, guard_us, member, counts (1/0),
# unsettled_us, create (1/0). Returns 0 when admitted, else the microseconds to wait before asking again (an
# upper bound while the oldest entry is still unsettled). An admitted entry is scored as if it settled
# `unsettled_us` from now.
TAKE_REQUEST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[7] == '1' then paused = math.max(paused, tonumber(redis.call('GET', KEYS[3]) or '0')) end
if paused > now then return paused - now end
if ARGV[5] == '0' then return 0 end
local span = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - span))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6]), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil((span * 2 + tonumber(ARGV[6])) / 1000))
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + span + 1 - now)
"""

# KEYS: window. ARGV: member. Dates an entry at its answer, which the API stamped no later than now.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], 'XX', 'LT', now, ARGV[1])
return 0
"""

# KEYS: paused_until or creates_paused_until. ARGV: pause_us. Only ever pushes the pause later.
PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  redis.call('SET', KEYS[1], until_us, 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 0
"""

# KEYS: slots. ARGV: max_in_flight, lease_us, token. Returns 0 when the slot is taken, else us until the
# earliest lease could expire (an upper bound on the wait; a release usually wakes the waiter sooner).
TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  return 0
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
"""

# KEYS: slots. ARGV: lease_us, token... Extends only leases still present; returns how many were lost.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lost = 0
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i]) == 0 then
    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then lost = lost + 1 end
  end
end
return lost
"""

# KEYS: window. ARGV: span_us (window + guard), expire_us, prefix, replace_us, then pairs of member and
# age_us. Unless replace_us is negative, first drops the entries whose member starts with `prefix` dated more
# than replace_us ago (one process's requests answered by then). Then enters requests answered `age_us`
# before now, dated then, as TAKE_REQUEST's settled entries are; one older than the span is left out, and a
# member already present keeps its date. Returns how many were entered.
SEED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local span = tonumber(ARGV[1])
local prefix = ARGV[3]
if tonumber(ARGV[4]) >= 0 then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))) do
    if string.sub(member, 1, #prefix) == prefix then redis.call('ZREM', KEYS[1], member) end
  end
end
local entered = 0
for i = 5, #ARGV, 2 do
  local age = tonumber(ARGV[i + 1])
  if age < span then
    entered = entered + redis.call('ZADD', KEYS[1], 'NX', now - age, ARGV[i])
  end
end
if entered > 0 then redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000)) end
return entered
"""
