-- sliding-window-counter. KEYS[1]: a hash {i = window index, p = previous
-- window's count, c = current window's count}; windows are multiples of
-- windowMs on the Redis server's clock. It expires once the window after
-- its last write has ended (set by the first write of each window).
local KEYS_PER = 1
local function check(k1, k2, cost, consume)
  local now = clock()
  local k = math.floor(now / window)
  local v = redis.call('HMGET', k1, 'i', 'p', 'c')
  local prev, curr = 0, 0
  if v[1] then
    local idx = tonumber(v[1])
    if idx == k then
      prev, curr = tonumber(v[2]), tonumber(v[3])
    elseif idx + 1 == k then
      prev = tonumber(v[3])
    end
  end
  local e = now - k * window
  local function est() return prev * (1 - e / window) + curr end
  local function reset()
    if curr > 0 then return 2 * window - e end
    if prev > 0 then return window - e end
    return 0
  end
  if cost > limit then
    return 0, limit - est(), math.huge, reset()
  end
  if est() + cost <= limit + EPS then
    if consume and cost > 0 then
      curr = curr + cost
      redis.call('HSET', k1, 'i', num(k), 'p', num(prev), 'c', num(curr))
      -- The state matters until window k + 1 ends: the first write of a
      -- window sets the expiry just past that; a later one in the same
      -- window would move it by under 1 ms, so it is not sent again.
      if not (v[1] and tonumber(v[1]) == k) then
        redis.call('PEXPIRE', k1, num(math.ceil(2 * window - e) + 1))
      end
    end
    return 1, limit - est(), 0, reset()
  end
  local retry
  if curr + cost <= limit and prev > 0 then
    retry = window * (1 - (limit - curr - cost) / prev) - e
  else
    retry = (window - e) + math.max(0, window * (1 - (limit - cost) / curr))
  end
  return 0, limit - est(), retry, reset()
end
