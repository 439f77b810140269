-- Publish one publication of a channel, atomically: offset, history, fan-out (DESIGN.md, Guarantee 3).
--
-- KEYS[1]  the channel's meta hash (fields: epoch, offset)        keys.channel_meta
-- KEYS[2]  the channel's history stream (entry id <offset>-0)     keys.channel_stream
-- ARGV[1]  the channel's pub/sub name                             keys.channel_pubsub
-- ARGV[2]  the payload (msgpack, see envelope.py)
-- ARGV[3]  history size: XADD MAXLEN ~ this many entries
-- ARGV[4]  history TTL in milliseconds, renewed on every publication
-- ARGV[5]  a fresh epoch, used only if the channel has none (new or lost stream)
-- ARGV[6]  PUBLISH, or SPUBLISH on Redis Cluster (sharded pub/sub: only this shard's subscribers)
-- ARGV[7]  the run_id of this server process, "" to skip the check below
--
-- Returns {epoch, offset}. (S)PUBLISHes "<epoch>:<offset>:<payload>" to ARGV[1].
--
-- Every key and the pub/sub name are hash-tagged {channel}: on Redis Cluster they are one slot,
-- so the script, and SPUBLISH from it, run on the channel's shard.
--
-- Honest epochs: the meta hash remembers which server process wrote it. Replication is
-- asynchronous, so a replica promoted by a failover (or a server restarted from a snapshot) may
-- lack the last publications while keeping an older meta; numbering on from there would give new
-- publications the offsets clients already saw. A meta written by another process therefore
-- starts a new epoch: clients holding the old one are told they cannot recover, never misled.

local meta = redis.call('HMGET', KEYS[1], 'epoch', 'server')
local epoch = meta[1]
if epoch and ARGV[7] ~= '' and meta[2] ~= ARGV[7] then
  if meta[2] then
    epoch = false
  else
    redis.call('HSET', KEYS[1], 'server', ARGV[7])  -- written before servers were recorded
  end
end
if not epoch then
  -- A new life of the channel: whatever stream is left belongs to the old one (its offsets would
  -- collide with ours), and clients holding the old epoch must learn that they cannot recover.
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'server', ARGV[7])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
-- The stream id is the offset, so history reads are XRANGE by offset without an index.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], string.format('%d-0', offset), 'p', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[6], ARGV[1], epoch .. ':' .. string.format('%d', offset) .. ':' .. ARGV[2])
return {epoch, offset}
