-- sliding-window (exact). KEYS[1]: the sum of the logged costs (a string);
-- KEYS[2]: the log, a list of "<time> <cost>" in time order (time in ms on
-- the Redis server's clock). Both keys share one hash tag and expire when
-- the newest entry leaves the window. An entry at t counts against every
-- check in [t, t + windowMs).
local KEYS_PER = 2
local function parse(e)
  local sep = string.find(e, ' ', 1, true)
  return tonumber(string.sub(e, 1, sep - 1)), tonumber(string.sub(e, sep + 1))
end
local function check(k1, k2, cost, consume)
  local now = clock()
  local sum = tonumber(redis.call('GET', k1) or '0')
  local changed = false
  local empty = false
  local oldest = redis.call('LINDEX', k2, '0')
  if not oldest then
    empty = true
  elseif parse(oldest) + window <= now then
    -- Drop what left the window, oldest first, a chunk at a time.
    while true do
      local head = redis.call('LRANGE', k2, '0', '63')
      if #head == 0 then
        empty = true
        break
      end
      local n = 0
      for i = 1, #head do
        local t, c = parse(head[i])
        if t + window > now then break end
        sum = sum - c
        n = i
      end
      if n > 0 then
        redis.call('LTRIM', k2, num(n), '-1')
        changed = true
      end
      if n < #head then break end
    end
  end
  if empty then sum = 0 end
  local back_t, back_c
  if not empty then
    back_t, back_c = parse(redis.call('LINDEX', k2, '-1'))
  end
  local function reset()
    if back_t then return back_t + window - now end
    return 0
  end
  local function save()
    if not changed then return end
    if empty and not back_t then
      redis.call('DEL', k1, k2)
      return
    end
    local ttl = num(math.ceil(back_t + window - now) + 1)
    redis.call('SET', k1, num(sum), 'PX', ttl)
    redis.call('PEXPIRE', k2, ttl)
  end
  if cost > limit then
    save()
    return 0, limit - sum, math.huge, reset()
  end
  if sum + cost <= limit + EPS then
    if consume and cost > 0 then
      -- A server clock that stepped back must not break the log's order.
      local t = now
      if back_t and back_t > t then t = back_t end
      -- At most ceil(limit) entries: past it (only with fractional costs) the
      -- newest entry absorbs this one, which only makes the limit stricter.
      local max_entries = math.max(1, math.ceil(limit))
      -- (The length is RPUSH's reply: one command fewer than LLEN first.)
      if back_t and back_t == t then
        back_c = back_c + cost
        redis.call('LSET', k2, '-1', num(t) .. ' ' .. num(back_c))
      elseif back_t and redis.call('RPUSH', k2, num(t) .. ' ' .. num(cost)) > max_entries then
        redis.call('RPOP', k2)
        back_c = back_c + cost
        redis.call('LSET', k2, '-1', num(t) .. ' ' .. num(back_c))
      else
        if not back_t then redis.call('RPUSH', k2, num(t) .. ' ' .. num(cost)) end
        back_c = cost
      end
      back_t = t
      empty = false
      sum = sum + cost
      changed = true
    end
    save()
    return 1, limit - sum, 0, reset()
  end
  -- Denied: the cost fits once enough of the oldest units have left.
  local need = sum + cost - limit
  local freed = 0
  local retry = math.huge
  local i = 0
  while retry == math.huge do
    local chunk = redis.call('LRANGE', k2, num(i), num(i + 127))
    if #chunk == 0 then break end
    for j = 1, #chunk do
      local t, c = parse(chunk[j])
      freed = freed + c
      if freed + EPS >= need then
        retry = t + window - now
        break
      end
    end
    i = i + #chunk
  end
  save()
  return 0, limit - sum, retry, reset()
end
