-- Admission: checks 5-8 of the key policy, in order, and takes every counter only when all
-- pass (a request refused by a later check consumes nothing). One round trip.
--
-- KEYS: 1 rpm zset (request ids scored by arrival ms), 2 rpd counter (this local day),
--       3 tpm hash (10 s bucket -> tokens), 4 concurrency zset (request id -> lease expiry ms),
--       5 tenant account hash (avail, micro-units), 6 key account hash (avail, micro-units),
--       7 the session's sticky binding (string), 8 credential cool-downs (hash id -> until ms)
-- ARGV: 1 now ms, 2 request id, 3 rpm, 4 rpd, 5 seconds to local midnight, 6 tpm,
--       7 concurrency, 8 lease ms, 9 reservation (micro-units), 10 key has a quota (0/1),
--       11 commit (0/1)
-- Returns {code, a, b, binding, cooled}: code 0 = admitted (a = requests in the RPM window,
-- b = ms until the oldest leaves it, binding = the sticky route or '', cooled = ids of
-- credentials cooling down); -1 = tenant account not loaded, -2 = key account not loaded;
-- 5 quota, 6 rpm, 7 rpd, 9 tpm, 8 concurrency (a = retry-after ms). Routing state rides
-- along so a request costs one round trip for limits and routing together.
local now = tonumber(ARGV[1])
local reserve = tonumber(ARGV[9])
local key_quota = ARGV[10] == '1'

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

if reserve > 0 then
  redis.call('HINCRBY', KEYS[5], 'avail', -reserve)
  if key_quota then redis.call('HINCRBY', KEYS[6], 'avail', -reserve) end
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
  local lease = tonumber(ARGV[8])
  redis.call('ZADD', KEYS[4], now + lease, ARGV[2])
  redis.call('PEXPIRE', KEYS[4], lease * 2)
end
local binding, cooled = routing_state()
return {0, rpm_count, rpm_reset, binding, cooled}
