-- sliding-window (exact). KEYS[2]: the log, a list of "<time> <cost>" in
-- time order (time in ms on the Redis server's clock). KEYS[1]: what a check
-- needs to know of the log without reading it, 7 little-endian doubles
-- (56 bytes): the sum of the logged costs, the oldest entry's time and
-- cost, the newest entry's time and cost, the log's length, and the
-- absolute server time its PX was last set for (binary: unpacking it costs
-- a tenth of parsing the same as text). KEYS[1] expires when the newest
-- entry leaves the window; the log's expiry is moved only when it would
-- come first, to a window past that, so a steady flow of admissions costs a
-- GET, an RPUSH and a SET, and the log's PEXPIRE once a window. Both keys
-- share one hash tag. An entry at t counts against every check in
-- [t, t + windowMs). An older layout (KEYS[1] the sum alone) is still read.
local KEYS_PER = 2
local function parse(e)
  local sep = string.find(e, ' ', 1, true)
  return tonumber(string.sub(e, 1, sep - 1)), tonumber(string.sub(e, sep + 1))
end
-- Write the state back (only if it changed); the log's entry and PEXPIRE
-- were sent by the caller.
local function save(k1, k2, now, sum, ot, oc, bt, bc, len, lexp)
  if len == 0 then
    redis.call('DEL', k1, k2)
    return
  end
  local ttl = math.ceil(bt + window - now) + 1
  -- The log must outlive KEYS[1], by more than the clocks' slack (a key's
  -- PX counts from the command's start, in whole ms): when it would not
  -- by 100 ms, it is set to a window (at least 200 ms) past KEYS[1].
  if lexp < now + ttl + 100 then
    local lttl = ttl + math.max(math.ceil(window), 200)
    redis.call('PEXPIRE', k2, num(lttl))
    lexp = math.floor(now + lttl)
  end
  redis.call('SET', k1, struct.pack('<ddddddd', sum, ot, oc, bt, bc, len, lexp), 'PX', num(ttl))
end
-- An entry's text: the time is the same for every check of one call, and
-- the cost usually is.
local t_num, t_txt, c_num, c_txt
local function entry(t, c)
  if t ~= t_num then t_num, t_txt = t, num(t) end
  if c ~= c_num then c_num, c_txt = c, num(c) end
  return t_txt .. ' ' .. c_txt
end
local function check(k1, k2, cost, consume)
  local now = clock()
  -- sum; oldest entry (ot, oc); newest (bt, bc); length; log expiry.
  local sum, ot, oc, bt, bc, len, lexp
  local m = redis.call('GET', k1)
  if m then
    if #m == 56 then
      sum, ot, oc, bt, bc, len, lexp = struct.unpack('<ddddddd', m)
    else
      -- The older layout: the sum alone; the rest from the log.
      local head = redis.call('LINDEX', k2, '0')
      if head then
        sum = tonumber(m)
        ot, oc = parse(head)
        bt, bc = parse(redis.call('LINDEX', k2, '-1'))
        len = redis.call('LLEN', k2)
        lexp = 0
      end
    end
  end
  -- With no state, a log may be left over (it outlives KEYS[1] by up to a
  -- window): every entry in it has left the window.
  local stale = not sum
  local changed = false
  if sum and bt + window <= now then
    -- Everything has left the window.
    sum = nil
    stale = true
    changed = true
  elseif sum and ot + window <= now then
    -- Drop what left the window, oldest first: small reads first (a steady
    -- flow frees about one entry per admission), larger while all expired.
    local from, chunk = 0, 8
    while true do
      local part = redis.call('LRANGE', k2, num(from), num(from + chunk - 1))
      if #part == 0 then
        -- The log is shorter than recorded (changed from outside).
        sum = nil
        stale = true
        break
      end
      local kept = false
      for i = 1, #part do
        local t, c = parse(part[i])
        if t + window > now then
          ot, oc = t, c
          kept = true
          break
        end
        sum = sum - c
        len = len - 1
        from = from + 1
      end
      if kept then break end
      chunk = chunk * 8
    end
    if sum then redis.call('LTRIM', k2, num(from), '-1') end
    changed = true
  end
  if not sum then
    sum, len = 0, 0
    ot, oc, bt, bc = nil, nil, nil, nil
  end
  if cost > limit then
    if changed then save(k1, k2, now, sum, ot, oc, bt, bc, len, lexp) end
    return 0, limit - sum, math.huge, (bt and bt + window - now or 0)
  end
  if sum + cost <= limit + EPS then
    if consume and cost > 0 then
      -- A server clock that stepped back must not break the log's order.
      local t = now
      if bt and bt > t then t = bt end
      -- At most ceil(limit) entries: past it (only with fractional costs) the
      -- newest entry absorbs this one, which only makes the limit stricter.
      local merged = false
      if bt and (bt == t or len >= math.max(1, math.ceil(limit))) then
        local r = redis.pcall('LSET', k2, '-1', entry(t, bc + cost))
        if type(r) == 'table' and r.err then
          -- The log is gone (changed from outside): start it again.
          stale = true
        else
          merged = true
          bc = bc + cost
          bt = t
          if len == 1 then ot, oc = bt, bc end
        end
      end
      if not merged then
        local n = redis.call('RPUSH', k2, entry(t, cost))
        if stale or n == 1 then
          -- A log left over holds only entries that have left the window.
          if n > 1 then redis.call('LTRIM', k2, '-1', '-1') end
          sum, len, lexp = 0, 1, 0
          ot, oc = t, cost
          stale = false
        else
          -- (Past ceil(limit) only if the log changed from outside.)
          len = n
        end
        bt, bc = t, cost
      end
      sum = sum + cost
      changed = true
    end
    if changed then save(k1, k2, now, sum, ot, oc, bt, bc, len, lexp) end
    return 1, limit - sum, 0, (bt and bt + window - now or 0)
  end
  -- Denied: the cost fits once enough of the oldest units have left; the
  -- oldest entry alone is often enough (no read of the log).
  local need = sum + cost - limit
  local retry = math.huge
  if oc + EPS >= need then
    retry = ot + window - now
  else
    local freed = 0
    local i = 0
    while retry == math.huge do
      local part = redis.call('LRANGE', k2, num(i), num(i + 127))
      if #part == 0 then
        -- The log is shorter than recorded: all of it is gone by then.
        retry = bt + window - now
        break
      end
      for j = 1, #part do
        local t, c = parse(part[j])
        freed = freed + c
        if freed + EPS >= need then
          retry = t + window - now
          break
        end
      end
      i = i + #part
    end
  end
  if changed then save(k1, k2, now, sum, ot, oc, bt, bc, len, lexp) end
  return 0, limit - sum, retry, (bt and bt + window - now or 0)
end
