-- Settlement when a request ends, in one step: free its concurrency slot, close its
-- reservation (return the unused part, or charge the whole cost if the reservation's lease
-- ran out and it was already given back), note the cost as "unposted" until its usage row
-- is written to the database, count its tokens for the TPM window, record the route that
-- served the session, and append the request's usage row to the journal, so a served
-- request's row and its money movement are durable together before the answer ends.
--
-- KEYS: 1 concurrency zset, 2 tenant account hash, 3 key account hash, 4 tpm hash,
--       5 the session's sticky binding, 6 the tenant's reservations zset, 7 usage journal,
--       8 the tenant's unposted costs (hash request id -> micro-units), 9 the key's,
--       10 the tenant's reclaimed reservations (zset request id -> when)
-- ARGV: 1 request id, 2 reservation (micro-units), 3 cost (micro-units), 4 key has a quota
--       (0/1), 5 tokens, 6 now ms, 7 binding ('' = leave it), 8 binding ttl seconds,
--       9 key id, 10 the usage row ('' = none)
-- Returns 1, or 0 if the request was settled before (nothing done again).
--
-- Settling twice changes nothing (a process that lost the reply to this script during a
-- Redis outage sends it again when Redis is back): the reservation's member tells a first
-- settle (still reserved: refund the rest), a late one (reclaimed after its lease, with a
-- tombstone: charge the cost) and a repeat (neither: done already).
local MAX_MICRO = 1000000000000000
local function int_arg(i, lo, hi)
  local v = tonumber(ARGV[i])
  if v == nil or v ~= v or v < lo or v > hi or v ~= math.floor(v) then
    return redis.error_reply('ERR turnpike settle: argument ' .. i .. ' out of range: '
                             .. tostring(ARGV[i]))
  end
  return v
end
local reserve = int_arg(2, 0, MAX_MICRO)
if type(reserve) == 'table' then return reserve end
local cost = int_arg(3, 0, MAX_MICRO)
if type(cost) == 'table' then return cost end
local tokens = int_arg(5, 0, 1e12)
if type(tokens) == 'table' then return tokens end

redis.call('ZREM', KEYS[1], ARGV[1])
local delta = -cost
if reserve > 0 then
  local member = ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[9] .. '|' .. ARGV[4]
  if redis.call('ZREM', KEYS[6], member) == 1 then
    delta = reserve - cost
  elseif redis.call('ZREM', KEYS[10], ARGV[1]) == 0 then
    return 0
  end
end
-- An account that vanished (dropped after a change, or Redis lost it) is re-loaded from the
-- database when next needed, less what is reserved and unposted: adjusting a missing one
-- would recreate it wrong.
if delta ~= 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'avail', delta) end
  if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'avail', delta)
  end
end
if cost > 0 and ARGV[10] ~= '' then  -- the writer of the row takes it off again
  redis.call('HSET', KEYS[8], ARGV[1], cost)
  if ARGV[4] == '1' then redis.call('HSET', KEYS[9], ARGV[1], cost) end
end
if tokens > 0 then
  local bucket = math.floor(tonumber(ARGV[6]) / 10000)
  redis.call('HINCRBY', KEYS[4], bucket, tokens)
  redis.call('EXPIRE', KEYS[4], 120)
  local fields = redis.call('HKEYS', KEYS[4])
  for _, b in ipairs(fields) do
    if tonumber(b) <= bucket - 6 then redis.call('HDEL', KEYS[4], b) end
  end
end
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[5], ARGV[7], 'EX', tonumber(ARGV[8]))
end
if ARGV[10] ~= '' then redis.call('RPUSH', KEYS[7], ARGV[10]) end
return 1
