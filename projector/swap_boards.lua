-- Replace every leaderboard, the name hash and the watermark with a freshly built set,
-- atomically: readers see the old state or the new one, never a mix.
--
-- ARGV: 1 prefix, 2 build prefix, 3 replay request id ("" = none), 4 position,
--       5 number of watermark field/value pairs, the pairs,
--       then number of boards, then per board: build key suffix, expireat ("" = never).
local prefix, build = ARGV[1], ARGV[2]
local registry = prefix .. 'boards'
local wm_key = prefix .. 'watermark'
-- The marker is set before the first build key: without it, Redis lost keys of this build
-- (flushed, cleared or restarted meanwhile) and publishing it would hide the loss.
if redis.call('EXISTS', build .. 'started') == 0 then
  return redis.error_reply('BUILD LOST')
end
redis.call('UNLINK', build .. 'started')

local i = 5
local nfields = tonumber(ARGV[i]); i = i + 1
local wm_args = {}
for _ = 1, nfields * 2 do
  wm_args[#wm_args + 1] = ARGV[i]; i = i + 1
end

local old = redis.call('ZRANGE', registry, 0, -1)
for k = 1, #old do redis.call('UNLINK', old[k]) end
redis.call('UNLINK', registry)

local nboards = tonumber(ARGV[i]); i = i + 1
for _ = 1, nboards do
  local suffix, expireat = ARGV[i], ARGV[i + 1]
  i = i + 2
  local final = prefix .. suffix
  redis.call('UNLINK', final)
  if redis.call('EXISTS', build .. suffix) == 1 then
    redis.call('RENAME', build .. suffix, final)
    if expireat == '' then
      redis.call('PERSIST', final)
      redis.call('ZADD', registry, 'inf', final)
    else
      redis.call('EXPIREAT', final, expireat)
      redis.call('ZADD', registry, expireat, final)
    end
  end
end

redis.call('UNLINK', prefix .. 'users')
if redis.call('EXISTS', build .. 'users') == 1 then
  redis.call('RENAME', build .. 'users', prefix .. 'users')
  redis.call('PERSIST', prefix .. 'users')
end

redis.call('UNLINK', wm_key)
redis.call('HSET', wm_key, 'position', ARGV[4], unpack(wm_args))
if ARGV[3] ~= '' and redis.call('GET', prefix .. 'replay:request') == ARGV[3] then
  redis.call('DEL', prefix .. 'replay:request')
end
for k = 1, #wm_args, 2 do if wm_args[k] == 'lsn' then redis.call('PUBLISH', prefix .. 'events', wm_args[k + 1]) end end
return 'ok'
