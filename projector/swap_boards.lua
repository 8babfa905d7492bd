-- Replace every board, the label hashes and the watermark with a freshly built set,
-- atomically: readers see the old state or the new one, never a mix.
--
-- KEYS: 1 watermark, 2 registry of board keys, 3 replay request.
-- ARGV: 1 prefix, 2 build prefix, 3 replay request id ("" = none), 4 position,
--       5 number of watermark field/value pairs, the pairs,
--       then number of boards, then per board: key suffix, expireat ("" = never), members,
--       then number of label hashes, then per hash: key suffix, fields (0: may be absent).
local prefix, build = ARGV[1], ARGV[2]
local wm_key, registry = KEYS[1], KEYS[2]
-- The marker is set before the first build key: without it, Redis lost keys of this build
-- (flushed, cleared or restarted meanwhile) and publishing it would hide the loss.
if redis.call('EXISTS', build .. 'started') == 0 then
  return redis.error_reply('BUILD LOST')
end

local i = 5
local nfields = tonumber(ARGV[i]); i = i + 1
local wm_args = {}
for _ = 1, nfields * 2 do
  wm_args[#wm_args + 1] = ARGV[i]; i = i + 1
end
local boards_at = i
local nboards = tonumber(ARGV[i])
local labels_at = i + 1 + 3 * nboards
local nlabels = tonumber(ARGV[labels_at])
-- Every key the build loaded must still hold all it loaded (an eviction, a stray UNLINK or
-- a restart from an older snapshot would otherwise publish a board short or empty): check
-- them all before changing anything.
for j = boards_at + 1, labels_at - 1, 3 do
  if redis.call('ZCARD', build .. ARGV[j]) ~= tonumber(ARGV[j + 2]) then
    return redis.error_reply('BUILD LOST ' .. ARGV[j])
  end
end
for j = labels_at + 1, labels_at + 2 * nlabels, 2 do
  if redis.call('HLEN', build .. ARGV[j]) ~= tonumber(ARGV[j + 1]) then
    return redis.error_reply('BUILD LOST ' .. ARGV[j])
  end
end
redis.call('UNLINK', build .. 'started')

local old = redis.call('ZRANGE', registry, 0, -1)
for k = 1, #old do redis.call('UNLINK', old[k]) end
redis.call('UNLINK', registry)

for j = boards_at + 1, labels_at - 1, 3 do
  local suffix, expireat = ARGV[j], ARGV[j + 1]
  local final = prefix .. suffix
  redis.call('RENAME', build .. suffix, final)
  if expireat == '' then
    redis.call('PERSIST', final)
    redis.call('ZADD', registry, 'inf', final)
  else
    redis.call('EXPIREAT', final, expireat)
    redis.call('ZADD', registry, expireat, final)
  end
end

for j = labels_at + 1, labels_at + 2 * nlabels, 2 do
  local final = prefix .. ARGV[j]
  redis.call('UNLINK', final)
  if redis.call('EXISTS', build .. ARGV[j]) == 1 then
    redis.call('RENAME', build .. ARGV[j], final)
    redis.call('PERSIST', final)
  end
end

redis.call('UNLINK', wm_key)
redis.call('HSET', wm_key, 'position', ARGV[4], unpack(wm_args))
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
end
for k = 1, #wm_args, 2 do if wm_args[k] == 'lsn' then redis.call('PUBLISH', prefix .. 'events', wm_args[k + 1]) end end
return 'ok'
