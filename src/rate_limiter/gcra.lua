-- gcra. KEYS[1]: the theoretical arrival time (ms, Redis server clock),
-- expiring when it is in the past (a fresh key).
local KEYS_PER = 1
local function check(k1, k2, cost, consume)
  local now = clock()
  local t = window / limit
  local tat = tonumber(redis.call('GET', k1) or '0')
  if tat < now then tat = now end
  local function rem(x) return (window - (x - now)) / t end
  if cost > limit then
    return 0, rem(tat), math.huge, tat - now
  end
  local new_tat = tat + cost * t
  local allow_at = new_tat - window
  if allow_at <= now + EPS * t then
    local after = tat
    if consume then after = new_tat end
    if consume and cost > 0 then
      redis.call('SET', k1, num(new_tat), 'PX', num(math.ceil(new_tat - now) + 1))
    end
    local r = rem(after)
    if r > limit then r = limit end
    return 1, r, 0, after - now
  end
  return 0, rem(tat), allow_at - now, tat - now
end
