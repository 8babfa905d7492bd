-- Apply one batch of leaderboard deltas and move the watermark, atomically.
--
-- ARGV layout (all strings):
--   1 prefix   2 expected position ("" = no watermark may exist)   3 new position
--   4 number of watermark field/value pairs, then the pairs
--   then: clear_boards ("1"/"0"), clear_users ("1"/"0")
--   then: number of names, then user_id, flag ("s" set / "d" delete), value triples
--   then: number of boards, then per board: key, expireat ("" = never), n, member, delta...
-- Returns {status, replay_request}; status "ok", or an error reply
-- "POSITION <found>" when the stored position is not the expected one.
local prefix = ARGV[1]
local wm_key = prefix .. 'watermark'
local registry = prefix .. 'boards'
local found = redis.call('HGET', wm_key, 'position')
if not found then found = '' end
if found ~= ARGV[2] then
  return redis.error_reply('POSITION ' .. found)
end

local i = 4
local nfields = tonumber(ARGV[i]); i = i + 1
local wm_args = {}
for _ = 1, nfields * 2 do
  wm_args[#wm_args + 1] = ARGV[i]; i = i + 1
end

local clear_boards = ARGV[i]; i = i + 1
local clear_users = ARGV[i]; i = i + 1
if clear_boards == '1' then
  local keys = redis.call('ZRANGE', registry, 0, -1)
  for k = 1, #keys do redis.call('UNLINK', keys[k]) end
  redis.call('UNLINK', registry)
end
if clear_users == '1' then
  redis.call('UNLINK', prefix .. 'users')
end

local nnames = tonumber(ARGV[i]); i = i + 1
local users_key = prefix .. 'users'
for _ = 1, nnames do
  local user, flag, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if flag == 's' then
    redis.call('HSET', users_key, user, value)
  else
    redis.call('HDEL', users_key, user)
  end
end

local nboards = tonumber(ARGV[i]); i = i + 1
for _ = 1, nboards do
  local key, expireat, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  for _ = 1, n do
    local member, delta = ARGV[i], ARGV[i + 1]
    i = i + 2
    if tonumber(redis.call('ZINCRBY', key, delta, member)) <= 0 then
      redis.call('ZREM', key, member)
    end
  end
  if expireat == '' then
    redis.call('ZADD', registry, 'inf', key)
  else
    redis.call('ZADD', registry, expireat, key)
    redis.call('EXPIREAT', key, expireat)
  end
end

local now = redis.call('TIME')[1]
redis.call('ZREMRANGEBYSCORE', registry, '-inf', '(' .. now)
redis.call('HSET', wm_key, 'position', ARGV[3], unpack(wm_args))
return {'ok', redis.call('GET', prefix .. 'replay:request') or ''}
