-- Replace every board, the label hashes and the watermark with a freshly built set,
-- atomically: readers see the old state or the new one, never a mix.
--
-- KEYS: 1 watermark, 2 registry of board keys, 3 replay request, 4 owner (fencing token),
--       5 the build's marker, then per board its build key and its final key, then per
--       label hash the same, then every key the registry lists now (all declared: in a
--       Redis Cluster they share the prefix's hash tag).
-- ARGV: 1 the writer's fencing token, 2 replay request id ("" = none), 3 position,
--       4 the watermark channel, 5 number of watermark field/value pairs, the pairs,
--       then number of boards, then per board: expireat ("" = never), members,
--       then number of label hashes, then per hash: fields (0: may be absent),
--       then the number of registered keys declared.
local wm_key, registry = KEYS[1], KEYS[2]
local owner = redis.call('GET', KEYS[4]) or ''
if owner ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. owner)
end
-- The marker is set before the first build key: without it, Redis lost keys of this build
-- (flushed, cleared or restarted meanwhile) and publishing it would hide the loss.
if redis.call('EXISTS', KEYS[5]) == 0 then
  return redis.error_reply('BUILD LOST')
end

local i = 5
local nfields = tonumber(ARGV[i]); i = i + 1
local wm_args = {}
for _ = 1, nfields * 2 do
  wm_args[#wm_args + 1] = ARGV[i]; i = i + 1
end
local nboards = tonumber(ARGV[i]); i = i + 1
local boards_at = i
local nlabels = tonumber(ARGV[boards_at + 2 * nboards])
local labels_at = boards_at + 2 * nboards + 1
local nold = tonumber(ARGV[labels_at + nlabels])
local board_keys, label_keys, old_keys = 6, 6 + 2 * nboards, 6 + 2 * nboards + 2 * nlabels
if redis.call('ZCARD', registry) ~= nold then
  return redis.error_reply('REGISTRY CHANGED')
end
-- Every key the build loaded must still hold all it loaded (an eviction, a stray UNLINK or
-- a restart from an older snapshot would otherwise publish a board short or empty): check
-- them all before changing anything.
for b = 0, nboards - 1 do
  if redis.call('ZCARD', KEYS[board_keys + 2 * b]) ~= tonumber(ARGV[boards_at + 2 * b + 1]) then
    return redis.error_reply('BUILD LOST ' .. KEYS[board_keys + 2 * b])
  end
end
for l = 0, nlabels - 1 do
  if redis.call('HLEN', KEYS[label_keys + 2 * l]) ~= tonumber(ARGV[labels_at + l]) then
    return redis.error_reply('BUILD LOST ' .. KEYS[label_keys + 2 * l])
  end
end
redis.call('UNLINK', KEYS[5])

for k = old_keys, old_keys + nold - 1 do redis.call('UNLINK', KEYS[k]) end
redis.call('UNLINK', registry)

for b = 0, nboards - 1 do
  local built, final = KEYS[board_keys + 2 * b], KEYS[board_keys + 2 * b + 1]
  local expireat = ARGV[boards_at + 2 * b]
  redis.call('RENAME', built, final)
  if expireat == '' then
    redis.call('PERSIST', final)
    redis.call('ZADD', registry, 'inf', final)
  else
    redis.call('EXPIREAT', final, expireat)
    redis.call('ZADD', registry, expireat, final)
  end
end

for l = 0, nlabels - 1 do
  local built, final = KEYS[label_keys + 2 * l], KEYS[label_keys + 2 * l + 1]
  redis.call('UNLINK', final)
  if redis.call('EXISTS', built) == 1 then
    redis.call('RENAME', built, final)
    redis.call('PERSIST', final)
  end
end

redis.call('UNLINK', wm_key)
redis.call('HSET', wm_key, 'position', ARGV[3], unpack(wm_args))
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then
  redis.call('DEL', KEYS[3])
end
for k = 1, #wm_args, 2 do if wm_args[k] == 'lsn' then redis.call('PUBLISH', ARGV[4], wm_args[k + 1]) end end
return 'ok'
