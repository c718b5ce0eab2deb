
-- Run the checks in order.
local out = {}
for i = 1, tonumber(ARGV[3]) do
  local base = (i - 1) * KEYS_PER
  local r = check(KEYS[base + 1], KEYS[base + 2], tonumber(ARGV[2 + 2 * i]), ARGV[3 + 2 * i] == '1')
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[3]
  out[#out + 1] = r[4]
end
return out
