-- hotpath rate limiter: the prelude of every algorithm's script.
-- One call checks n keys in order (each check atomic: the whole script is).
-- ARGV: limit, windowMs, n, then per check: cost, consume ('1' takes the
-- cost when allowed). KEYS: per check, the algorithm's KEYS_PER keys.
-- Returns per check: allowed (1/0), remaining, retryAfterMs ('inf' =
-- never), resetMs: integers when whole, else text (so fractions survive);
-- the client rounds them.
-- Time is the Redis server's (TIME), so clients with skewed clocks agree.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local EPS = 1e-6
-- A number as text, for storing (Lua's own tostring keeps 14 digits).
local function num(x)
  return string.format('%.17g', x)
end
-- A number for the reply: an integer when whole, else text.
local function out(x)
  if x == math.huge then return 'inf' end
  if x == math.floor(x) and x > -1e15 and x < 1e15 then return x end
  return string.format('%.17g', x)
end
local now_ms
local function clock()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  end
  return now_ms
end
