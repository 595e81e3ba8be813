-- Put back in their queues the messages a worker node held when it died for good. ARGV: the
-- node (POOL@HOST), the priority separator, then every queue list of its queues (LIST names,
-- priorities included) whose in-flight list may exist. Returns {from flight, from unacked}.
-- Unacknowledged messages go back marked redelivered, as kombu restores them, to the list of
-- their queue and priority; in-flight ones were never delivered and go back byte for byte.
local node, sep = ARGV[1], ARGV[2]
local from_flight, from_unacked = 0, 0
for i = 3, #ARGV do
  local list = ARGV[i]
  while redis.call('LMOVE', 'inflight@' .. node .. '@' .. list, list, 'RIGHT', 'RIGHT') do
    from_flight = from_flight + 1
  end
end
local unacked = 'unacked@' .. node
local entries = redis.call('HGETALL', unacked)
for i = 1, #entries, 2 do
  local stored = cjson.decode(entries[i + 1])
  local message, routing_key = stored[1], stored[3]
  message.headers = message.headers or {}
  message.headers.redelivered = true
  message.properties.delivery_info.redelivered = true
  local priority = tonumber(message.properties.priority) or 0
  local list = routing_key
  if priority > 0 then
    list = routing_key .. sep .. math.min(9, math.floor(priority))
  end
  redis.call('RPUSH', list, cjson.encode(message))
  from_unacked = from_unacked + 1
end
redis.call('DEL', unacked, 'unacked_index@' .. node, 'unacked_mutex@' .. node)
return {from_flight, from_unacked}
