-- fixed-window. KEYS[1]: the count (a string), expiring with its window
-- (PX), so the window is measured by the Redis server's clock. A window
-- starts at the first admission after the previous one ended.
local KEYS_PER = 1
local function check(k1, k2, cost, consume)
  local count = tonumber(redis.call('GET', k1) or '0')
  local reset = 0
  if count > 0 then
    reset = redis.call('PTTL', k1)
    if reset < 0 then
      reset = 0
      count = 0
    end
  end
  if cost > limit then
    return 0, limit - count, math.huge, reset
  end
  if count + cost <= limit + EPS then
    if consume and cost > 0 then
      count = count + cost
      if reset == 0 then
        reset = math.ceil(window)
        redis.call('SET', k1, num(count), 'PX', num(reset))
      else
        redis.call('SET', k1, num(count), 'KEEPTTL')
      end
    end
    return 1, limit - count, 0, reset
  end
  return 0, limit - count, reset, reset
end
