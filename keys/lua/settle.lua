-- Settlement when a request ends: free its concurrency slot, return the unused part of its
-- reservation (negative: charge the overrun), and count its tokens for the TPM window.
-- and record the route that served the session (sticky binding).
-- KEYS: 1 concurrency zset, 2 tenant account hash, 3 key account hash, 4 tpm hash,
--       5 the session's sticky binding
-- ARGV: 1 request id, 2 refund (micro-units), 3 key has a quota (0/1), 4 tokens, 5 now ms,
--       6 binding ('' = leave it), 7 binding ttl seconds
redis.call('ZREM', KEYS[1], ARGV[1])
local refund = tonumber(ARGV[2])
if refund ~= 0 then
  -- An account that vanished (Redis restarted) is re-loaded from the database, which is
  -- charged separately: adjusting a missing one would recreate it with a wrong value.
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'avail', refund) end
  if ARGV[3] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'avail', refund)
  end
end
local tokens = tonumber(ARGV[4])
if tokens > 0 then
  local bucket = math.floor(tonumber(ARGV[5]) / 10000)
  redis.call('HINCRBY', KEYS[4], bucket, tokens)
  redis.call('EXPIRE', KEYS[4], 120)
  local fields = redis.call('HKEYS', KEYS[4])
  for _, b in ipairs(fields) do
    if tonumber(b) <= bucket - 6 then redis.call('HDEL', KEYS[4], b) end
  end
end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[5], ARGV[6], 'EX', tonumber(ARGV[7]))
end
return 1
