-- Read-only summary of the broker database, as JSON. ARGV: the priority separator, then the
-- queue names. Counts each queue over its priority lists, every node's unacknowledged and
-- in-flight messages, and the dead letters. SCAN keeps Redis responsive on a large keyspace.
local sep = ARGV[1]
local summary = {queues = {}, unacked = {}, in_flight = {}}
for i = 2, #ARGV do
  local queue = ARGV[i]
  local depth = redis.call('LLEN', queue)
  for priority = 1, 9 do
    depth = depth + redis.call('LLEN', queue .. sep .. priority)
  end
  summary.queues[queue] = depth
end
local function each_key(pattern, count_of, into)
  local cursor = '0'
  repeat
    local reply = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = reply[1]
    for _, key in ipairs(reply[2]) do
      into[key] = redis.call(count_of, key)
    end
  until cursor == '0'
end
each_key('unacked@*', 'HLEN', summary.unacked)
each_key('inflight@*', 'LLEN', summary.in_flight)
summary.dead_letters = redis.call('LLEN', 'stack@dead-letters')
summary.dead_letters_moved = tonumber(redis.call('GET', 'stack@dead-letters-total') or '0')
return cjson.encode(summary)
