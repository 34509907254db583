-- Admission: checks 5-8 of the key policy, in order, and takes every counter only when all
-- pass (a request refused by a later check consumes nothing). One round trip.
--
-- KEYS: 1 rpm zset (request ids scored by arrival ms), 2 rpd counter (this local day),
--       3 tpm hash (10 s bucket -> tokens), 4 concurrency zset (request id -> lease expiry ms),
--       5 tenant account hash (avail, unposted; micro-units), 6 key account hash (same),
--       7 the session's sticky binding (string), 8 credential cool-downs (hash id -> until ms),
--       9 the tenant's reservations (zset "request|amount|key id|key quota" -> lease expiry ms),
--       10 the tenant's reclaimed reservations (zset request id -> when; see settle.lua)
-- ARGV: 1 now ms, 2 request id, 3 rpm, 4 rpd, 5 seconds to local midnight, 6 tpm,
--       7 concurrency, 8 lease ms, 9 reservation (micro-units), 10 key has a quota (0/1),
--       11 commit (0/1), 12 key id, 13 key account name prefix (for reclaimed reservations;
--       rediskeys.account_prefix("key"): names are built in portal/infra/rediskeys.py)
-- Returns {code, a, b, binding, cooled}: code 0 = admitted (a = requests in the RPM window,
-- b = ms until the oldest leaves it, binding = the sticky route or '', cooled = flat list of
-- credential id, cool-down end ms); -1 = tenant account not loaded, -2 = key account not
-- loaded; 5 quota, 6 rpm, 7 rpd, 9 tpm, 8 concurrency (a = retry-after ms). Routing state
-- rides along so a request costs one round trip for limits and routing together.
--
-- Impossible arguments are refused with an error, never applied: a negative or non-integer
-- reservation once left a tenant's account permanently "reserved".
local MAX_MICRO = 1000000000000000  -- 10^9 currency units: far above any real request
local function int_arg(i, lo, hi)
  local v = tonumber(ARGV[i])
  if v == nil or v ~= v or v < lo or v > hi or v ~= math.floor(v) then
    return redis.error_reply('ERR turnpike admit: argument ' .. i .. ' out of range: '
                             .. tostring(ARGV[i]))
  end
  return v
end
local now = int_arg(1, 0, 1e15)
if type(now) == 'table' then return now end
local reserve = int_arg(9, 0, MAX_MICRO)
if type(reserve) == 'table' then return reserve end
for _, i in ipairs({3, 4, 5, 6, 7, 8}) do
  local v = int_arg(i, 0, 1e12)
  if type(v) == 'table' then return v end
end
local key_quota = ARGV[10] == '1'

-- Reservations whose lease ran out belong to requests nobody is settling any more (their
-- process died): give the money back before deciding. Bounded per call; the reconciler
-- task sweeps every tenant too.
local stale = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now, 'LIMIT', 0, 64)
if #stale > 0 then  -- tombstones older than a day: their request will never settle now
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', now - 86400000)
end
for _, member in ipairs(stale) do
  local request, amount, key_id, quota = string.match(member, '^(.*)|(%d+)|(%d+)|([01])$')
  if amount then
    redis.call('ZADD', KEYS[10], now, request)
    if redis.call('EXISTS', KEYS[5]) == 1 then
      redis.call('HINCRBY', KEYS[5], 'avail', amount)
    end
    local key_account = ARGV[13] .. key_id
    if quota == '1' and redis.call('EXISTS', key_account) == 1 then
      redis.call('HINCRBY', key_account, 'avail', amount)
    end
  end
  redis.call('ZREM', KEYS[9], member)
end

local tenant_avail = redis.call('HGET', KEYS[5], 'avail')
if not tenant_avail then return {-1, 0, 0} end
local key_avail = nil
if key_quota then
  key_avail = redis.call('HGET', KEYS[6], 'avail')
  if not key_avail then return {-2, 0, 0} end
end
if tonumber(tenant_avail) < reserve or (key_quota and tonumber(key_avail) < reserve) then
  return {5, 60000, 0}
end

local rpm = tonumber(ARGV[3])
local rpm_count = 0
local rpm_reset = 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  rpm_count = redis.call('ZCARD', KEYS[1])
  if rpm_count > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    rpm_reset = tonumber(oldest[2]) + 60000 - now
  end
  if rpm_count >= rpm then return {6, rpm_reset, 0} end
end

local rpd = tonumber(ARGV[4])
if rpd > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= rpd then return {7, tonumber(ARGV[5]) * 1000, 0} end
end

local tpm = tonumber(ARGV[6])
if tpm > 0 then
  local bucket = math.floor(now / 10000)
  local fields = redis.call('HGETALL', KEYS[3])
  local used = 0
  local oldest = bucket
  for i = 1, #fields, 2 do
    local b = tonumber(fields[i])
    if b > bucket - 6 then
      used = used + tonumber(fields[i + 1])
      if b < oldest then oldest = b end
    end
  end
  if used >= tpm then return {9, (oldest + 6) * 10000 - now, 0} end
end

local concurrency = tonumber(ARGV[7])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= concurrency then return {8, 1000, 0} end
end

local function routing_state()
  local binding = redis.call('GET', KEYS[7]) or ''
  local cooled = {}
  local fields = redis.call('HGETALL', KEYS[8])
  for i = 1, #fields, 2 do
    if tonumber(fields[i + 1]) > now then
      cooled[#cooled + 1] = fields[i]
      cooled[#cooled + 1] = fields[i + 1]
    else
      redis.call('HDEL', KEYS[8], fields[i])
    end
  end
  return binding, cooled
end

if ARGV[11] ~= '1' then
  local binding, cooled = routing_state()
  return {0, rpm_count, rpm_reset, binding, cooled}
end

local lease = tonumber(ARGV[8])
if reserve > 0 then
  redis.call('HINCRBY', KEYS[5], 'avail', -reserve)
  if key_quota then redis.call('HINCRBY', KEYS[6], 'avail', -reserve) end
  redis.call('ZADD', KEYS[9], now + lease,
             ARGV[2] .. '|' .. ARGV[9] .. '|' .. ARGV[12] .. '|' .. ARGV[10])
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 61000)
  rpm_count = rpm_count + 1
  if rpm_reset == 0 then rpm_reset = 60000 end
end
if rpd > 0 then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]) + 3600)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[4], now + lease, ARGV[2])
  redis.call('PEXPIRE', KEYS[4], lease * 2)
end
local binding, cooled = routing_state()
return {0, rpm_count, rpm_reset, binding, cooled}
