-- token-bucket. KEYS[1]: a hash {t = tokens, l = last refill (ms, Redis
-- server clock)}, expiring when the bucket would be full again.
local KEYS_PER = 1
local function check(k1, k2, cost, consume)
  local now = clock()
  local rate = limit / window
  local v = redis.call('HMGET', k1, 't', 'l')
  local tokens = limit
  local last = now
  if v[1] then
    last = tonumber(v[2])
    tokens = tonumber(v[1]) + math.max(0, now - last) * rate
    if tokens > limit then tokens = limit end
  end
  if cost > limit then
    return 0, tokens, math.huge, (limit - tokens) / rate
  end
  if tokens + EPS >= cost then
    local left = tokens
    if consume then left = math.max(0, tokens - cost) end
    if consume and cost > 0 then
      redis.call('HSET', k1, 't', num(left), 'l', num(math.max(now, last)))
      redis.call('PEXPIRE', k1, num(math.ceil((limit - left) / rate) + 1))
    end
    return 1, left, 0, (limit - left) / rate
  end
  return 0, tokens, (cost - tokens) / rate, (limit - tokens) / rate
end
