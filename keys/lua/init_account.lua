-- Load a limiter account that is not loaded: avail = the database's amount, less what
-- requests in flight have reserved against it and what settled requests cost whose usage
-- rows are not yet written (the database does not know those yet). Nothing if loaded.
--
-- KEYS: 1 account hash, 2 its unposted costs hash, 3 the tenant's reservations zset,
--       4 (optional; not on a cluster) its unposted costs under the names before the hash
--       tags (rows an earlier release journalled, not yet written)
-- ARGV: 1 the database's amount (micro-units), 2 the key id for a key account ('' for the
--       tenant's own account: every reservation of the tenant counts)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local avail = tonumber(ARGV[1])
for _, cost in ipairs(redis.call('HVALS', KEYS[2])) do avail = avail - tonumber(cost) end
if KEYS[4] then
  for _, cost in ipairs(redis.call('HVALS', KEYS[4])) do avail = avail - tonumber(cost) end
end
local all = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, member in ipairs(all) do
  local _, amount, key_id, quota = string.match(member, '^(.*)|(%d+)|(%d+)|([01])$')
  if amount and (ARGV[2] == '' or (key_id == ARGV[2] and quota == '1')) then
    avail = avail - tonumber(amount)
  end
end
redis.call('HSET', KEYS[1], 'avail', avail)
return 1
