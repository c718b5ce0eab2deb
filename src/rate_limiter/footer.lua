
-- Run the checks in order; round each result as the client would.
local out = {}
local n = 0
local floor, ceil, huge = math.floor, math.ceil, math.huge
for i = 1, tonumber(ARGV[3]) do
  local base = (i - 1) * KEYS_PER
  local ok, left, retry, reset =
    check(KEYS[base + 1], KEYS[base + 2], tonumber(ARGV[2 + 2 * i]), ARGV[3 + 2 * i] == '1')
  left = floor(left + EPS)
  if left < 0 then left = 0 end
  if retry ~= huge then
    retry = ceil(retry - TEPS)
    if retry < 0 then retry = 0 end
  end
  reset = ceil(reset - TEPS)
  if reset < 0 then reset = 0 end
  if left >= 1e15 then left = string.format('%.17g', left) end
  if retry >= 1e15 then retry = string.format('%.17g', retry) end
  if reset >= 1e15 then reset = string.format('%.17g', reset) end
  out[n + 1] = ok
  out[n + 2] = left
  out[n + 3] = retry
  out[n + 4] = reset
  n = n + 4
end
return out
