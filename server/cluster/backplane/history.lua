-- Read a channel's top position and, optionally, publications after an offset, bounded in bytes.
--
-- KEYS[1]  the channel's meta hash (fields: epoch, offset)        keys.channel_meta
-- KEYS[2]  the channel's history stream (entry id <offset>-0)     keys.channel_stream
-- ARGV[1]  a fresh epoch, used only if the channel has none and ARGV[8] is "1" (see below)
-- ARGV[2]  history TTL in milliseconds (for a meta hash created here)
-- ARGV[3]  after: return publications with a larger offset
-- ARGV[4]  limit: at most this many (0: only the top)
-- ARGV[5]  "1": newest first (the newest `limit` in the range), "0": oldest first
-- ARGV[6]  history size: publications older than the newest `size` are not returned, even if
--          MAXLEN ~ kept them (approximate trimming keeps whole macro nodes)
-- ARGV[7]  max bytes: stop before the payloads (plus a fixed overhead each) would exceed this;
--          0: no bound. At least one publication is returned, so a reader always makes progress.
-- ARGV[8]  "1": give a channel without an epoch one (a subscriber learns the epoch the first
--          publication will carry, so it can recover); "0": a plain read, which writes nothing
--          and answers epoch "" and offset 0 for such a channel.
-- ARGV[9]  before: only publications with a smaller offset; 0: no upper bound
-- ARGV[10] the run_id of this server process ("" to skip the check), see publish.lua
--
-- Returns {epoch, top offset, {{id, {field, value, ...}}, ...}, more}: more is 1 when the range
-- holds publications that were left out (by `limit` or by bytes).
--
-- Entries are read in chunks, so a reply that stops at its byte bound never loads the rest.

local meta = redis.call('HMGET', KEYS[1], 'epoch', 'server')
local epoch = meta[1]
if epoch and ARGV[10] ~= '' and meta[2] and meta[2] ~= ARGV[10] then
  -- Written by another server process: this one may lack its last writes (see publish.lua).
  -- The key exists already, so this read still creates none.
  epoch = false
elseif not epoch and ARGV[8] ~= '1' then
  return {'', 0, {}, 0}
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'server', ARGV[10])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local limit = tonumber(ARGV[4])
local low = math.max(tonumber(ARGV[3]) + 1, top - tonumber(ARGV[6]) + 1)
local high = top
local before = tonumber(ARGV[9])
if before > 0 then
  high = math.min(high, before - 1)
end
if limit <= 0 or low > high then
  return {epoch, top, {}, 0}
end
local reverse = ARGV[5] == '1'
local max_bytes = tonumber(ARGV[7])
local overhead = 96  -- HISTORY_OVERHEAD (backplane/__init__.py): channel, epoch, offset, ts and punctuation
local entries, bytes = {}, 0
while #entries < limit and low <= high do
  local want = math.min(64, limit - #entries)
  local chunk
  if reverse then
    chunk = redis.call('XREVRANGE', KEYS[2], string.format('%d-0', high), string.format('%d-0', low), 'COUNT', want)
  else
    chunk = redis.call('XRANGE', KEYS[2], string.format('%d-0', low), string.format('%d-0', high), 'COUNT', want)
  end
  for _, entry in ipairs(chunk) do
    local fields = entry[2]
    local size = overhead
    for i = 2, #fields, 2 do
      size = size + #fields[i]
    end
    if max_bytes > 0 and #entries > 0 and bytes + size > max_bytes then
      return {epoch, top, entries, 1}
    end
    bytes = bytes + size
    entries[#entries + 1] = entry
    local offset = tonumber(string.match(entry[1], '^(%d+)'))
    if reverse then high = offset - 1 else low = offset + 1 end
  end
  if #chunk < want then
    break
  end
end
-- Left out by `limit`: whatever the range still holds.
local more = 0
if #entries >= limit and low <= high then
  more = 1
end
return {epoch, top, entries, more}
