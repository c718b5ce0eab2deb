-- hotpath rate limiter: shared prelude of every algorithm's script.
-- ARGV: limit, windowMs, cost, consume ('1' takes the cost when allowed).
-- Returns {allowed (0/1), remaining, retryAfterMs ('inf' = never), resetMs}
-- as numbers in text, so fractions survive; the client rounds them.
-- Time is the Redis server's (TIME), so clients with skewed clocks agree.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local consume = ARGV[4] == '1'
local EPS = 1e-6
local function num(x)
  if x == math.huge then return 'inf' end
  return string.format('%.17g', x)
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
