-- Read a channel's top position and, optionally, publications after an offset.
--
-- KEYS[1]  the channel's meta hash (fields: epoch, offset)        keys.channel_meta
-- KEYS[2]  the channel's history stream (entry id <offset>-0)     keys.channel_stream
-- ARGV[1]  a fresh epoch, used only if the channel has none (see below)
-- ARGV[2]  history TTL in milliseconds (for a meta hash created here)
-- ARGV[3]  after: return publications with a larger offset
-- ARGV[4]  limit: at most this many (0: only the top)
-- ARGV[5]  "1": newest first (the newest `limit` after `after`), "0": oldest first
-- ARGV[6]  history size: publications older than the newest `size` are not returned, even if
--          MAXLEN ~ kept them (approximate trimming keeps whole macro nodes)
--
-- Returns {epoch, top offset, {{id, {field, value, ...}}, ...}}.
--
-- A channel without an epoch gets one here, as in publish.lua: a client that subscribes to an
-- empty channel learns the epoch that the first publication will carry, so it can recover.

local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local limit = tonumber(ARGV[4])
local first = math.max(tonumber(ARGV[3]) + 1, top - tonumber(ARGV[6]) + 1)
if limit <= 0 or first > top then
  return {epoch, top, {}}
end
local entries
if ARGV[5] == '1' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', string.format('%d-0', first), 'COUNT', limit)
else
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', first), '+', 'COUNT', limit)
end
return {epoch, top, entries}
