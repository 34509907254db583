-- Settlement when a request ends, in one step: free its concurrency slot, close its
-- reservation (return the unused part, or charge the whole cost if the reservation's lease
-- ran out and it was already given back), count the cost as "unposted" until its usage row
-- is written to the database, count its tokens for the TPM window, record the route that
-- served the session, and append the request's usage row to the journal, so a served
-- request's row and its money movement are durable together before the answer ends.
--
-- KEYS: 1 concurrency zset, 2 tenant account hash, 3 key account hash, 4 tpm hash,
--       5 the session's sticky binding, 6 the tenant's reservations zset, 7 usage journal
-- ARGV: 1 request id, 2 reservation (micro-units), 3 cost (micro-units), 4 key has a quota
--       (0/1), 5 tokens, 6 now ms, 7 binding ('' = leave it), 8 binding ttl seconds,
--       9 key id, 10 the usage row ('' = none)
-- Returns 1.
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
  if redis.call('ZREM', KEYS[6], member) == 1 then delta = reserve - cost end
end
-- An account that vanished (Redis restarted) is re-loaded from the database, which is
-- charged when the usage row is written: adjusting a missing one would recreate it wrong.
local posted, key_posted = '0', '0'
if redis.call('EXISTS', KEYS[2]) == 1 then
  if delta ~= 0 then redis.call('HINCRBY', KEYS[2], 'avail', delta) end
  if cost > 0 then
    redis.call('HINCRBY', KEYS[2], 'unposted', cost)
    posted = '1'
  end
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  if delta ~= 0 then redis.call('HINCRBY', KEYS[3], 'avail', delta) end
  if cost > 0 then
    redis.call('HINCRBY', KEYS[3], 'unposted', cost)
    key_posted = '1'
  end
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
if ARGV[10] ~= '' then
  -- Two flags, tenant and key: whether the cost was counted as unposted above (the
  -- writer takes it off again once the row is in the database).
  redis.call('RPUSH', KEYS[7], posted .. key_posted .. '|' .. ARGV[10])
end
return 1
