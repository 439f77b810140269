-- Publish one publication of a channel, atomically: offset, history, fan-out (DESIGN.md, Guarantee 3).
--
-- KEYS[1]  the channel's meta hash (fields: epoch, offset)        keys.channel_meta
-- KEYS[2]  the channel's history stream (entry id <offset>-0)     keys.channel_stream
-- ARGV[1]  the channel's pub/sub name                             keys.channel_pubsub
-- ARGV[2]  the payload (msgpack, see envelope.py)
-- ARGV[3]  history size: XADD MAXLEN ~ this many entries
-- ARGV[4]  history TTL in milliseconds, renewed on every publication
-- ARGV[5]  a fresh epoch, used only if the channel has none (new or lost stream)
--
-- Returns {epoch, offset}. PUBLISHes "<epoch>:<offset>:<payload>" to ARGV[1].
--
-- Both keys are hash-tagged {channel}: the script runs on Redis Cluster too. The pub/sub name
-- is not a key (PUBLISH reaches every node of a cluster).

local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- A new life of the channel: whatever stream is left belongs to the old one (its offsets would
  -- collide with ours), and clients holding the old epoch must learn that they cannot recover.
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
-- The stream id is the offset, so history reads are XRANGE by offset without an index.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], string.format('%d-0', offset), 'p', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. string.format('%d', offset) .. ':' .. ARGV[2])
return {epoch, offset}
