-- Give back every expired reservation of one tenant: the sweep of the reconciler
-- (billing/reconcile.py). admit.lua does the same for the tenant it admits for, a bounded
-- number at a time (Redis scripts cannot share code; keep the two in step).
--
-- KEYS: 1 the tenant's reservations zset, 2 the tenant's account, 3 its reclaimed zset
-- ARGV: 1 now ms, 2 the key account name prefix (portal/infra/rediskeys.py: account_prefix)
-- Returns how many were given back.
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, member in ipairs(stale) do
  local request, amount, key_id, quota = string.match(member, '^(.*)|(%d+)|(%d+)|([01])$')
  if amount then
    redis.call('ZADD', KEYS[3], ARGV[1], request)
    if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'avail', amount) end
    local key_account = ARGV[2] .. key_id
    if quota == '1' and redis.call('EXISTS', key_account) == 1 then
      redis.call('HINCRBY', key_account, 'avail', amount)
    end
  end
  redis.call('ZREM', KEYS[1], member)
end
return #stale
