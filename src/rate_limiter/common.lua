-- hotpath rate limiter: the prelude of every algorithm's script.
-- One call checks n keys in order (each check atomic: the whole script is).
-- ARGV: limit, windowMs, n, then per check: cost, consume ('1' takes the
-- cost when allowed). KEYS: per check, the algorithm's KEYS_PER keys.
-- Returns per check: allowed (1/0), remaining, retryAfterMs ('inf' =
-- never), resetMs, already rounded as the client rounds them (remaining
-- down, times up, with the same slack), so they are integers: no float
-- formatting on the server for the reply (past 1e15 they go as text).
-- Each algorithm's check returns the four unrounded (math.huge = never).
-- Time is the Redis server's (TIME), so clients with skewed clocks agree.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local EPS = 1e-6
local TEPS = 1e-9
-- A number as text, for storing or as a command's argument: exact (17
-- digits; Lua's own tostring keeps 14), and a whole number as an integer
-- (the same text, without printf's slow float path).
local function num(x)
  if x == math.floor(x) and x > -1e15 and x < 1e15 then
    return string.format('%d', x)
  end
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
