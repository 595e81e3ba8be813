-- Empty lists of the broker database in one step (atomic: no worker takes a message halfway).
-- KEYS: the lists to empty (a queue's list and each of its priority lists; the dead letters).
-- ARGV[1]: 'purge' to delete them, anything else only counts (--check).
-- Returns, for each key in order, how many messages it held. Refuses, before deleting anything,
-- a key that is not a list. UNLINK frees the memory in the background, so a long queue does not
-- stall Redis. No other key is read or written.
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'list' and kind ~= 'none' then
    return redis.error_reply('refused: ' .. key .. ' is a ' .. kind .. ', not a queue list; nothing deleted')
  end
end
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('LLEN', key)
  if counts[i] > 0 and ARGV[1] == 'purge' then
    redis.call('UNLINK', key)
  end
end
return counts
