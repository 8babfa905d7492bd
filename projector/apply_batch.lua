-- Apply one batch of leaderboard deltas and move the watermark, atomically.
--
-- ARGV: 1 prefix, 2 expected position ("" = no watermark may exist), 3 new position,
--       4 the batch as JSON (one argument: cheap to send, decoded in C by cjson):
--   {"w": [field, value, ...],            watermark fields
--    "cb": true|false, "cu": true|false,  clear every board / the name hash first
--    "ns": [user, name, ...], "nd": [user, ...],   names to set / delete
--    "b": [[key, expireat or "", [member, delta, ...]], ...]}
-- Returns {"ok", replay request id or ""}, or the error "POSITION <found>" when the
-- stored position is not the expected one (lost data or a second writer).
local prefix = ARGV[1]
local wm_key = prefix .. 'watermark'
local registry = prefix .. 'boards'
local users_key = prefix .. 'users'
local found = redis.call('HGET', wm_key, 'position')
if not found then found = '' end
if found ~= ARGV[2] then
  return redis.error_reply('POSITION ' .. found)
end
local batch = cjson.decode(ARGV[4])
local CHUNK = 2000

if batch.cb then
  local keys = redis.call('ZRANGE', registry, 0, -1)
  for k = 1, #keys do redis.call('UNLINK', keys[k]) end
  redis.call('UNLINK', registry)
end
if batch.cu then
  redis.call('UNLINK', users_key)
end

local ns = batch.ns
for s = 1, #ns, 2 * CHUNK do
  local e = math.min(#ns, s + 2 * CHUNK - 1)
  redis.call('HSET', users_key, unpack(ns, s, e))
end
local nd = batch.nd
for s = 1, #nd, CHUNK do
  redis.call('HDEL', users_key, unpack(nd, s, math.min(#nd, s + CHUNK - 1)))
end

local boards = batch.b
for bi = 1, #boards do
  local key, expireat, flat = boards[bi][1], boards[bi][2], boards[bi][3]
  local n = #flat / 2
  local fresh = true  -- no member had a score: the key may be new and needs its expiry
  for s = 1, n, CHUNK do
    local e = math.min(n, s + CHUNK - 1)
    local members = {}
    for j = s, e do members[#members + 1] = flat[2 * j - 1] end
    local scores = redis.call('ZMSCORE', key, unpack(members))
    local add, rem = {}, {}
    for j = s, e do
      local current = scores[j - s + 1]
      local score = flat[2 * j]
      if current then
        fresh = false
        score = score + tonumber(current)
      end
      if score > 0 then
        add[#add + 1] = score
        add[#add + 1] = flat[2 * j - 1]
      else
        rem[#rem + 1] = flat[2 * j - 1]
      end
    end
    if #add > 0 then redis.call('ZADD', key, unpack(add)) end
    if #rem > 0 then redis.call('ZREM', key, unpack(rem)) end
  end
  if fresh then
    if expireat == '' then
      redis.call('ZADD', registry, 'inf', key)
    else
      redis.call('ZADD', registry, expireat, key)
      redis.call('EXPIREAT', key, expireat)
    end
  end
end

local now = redis.call('TIME')[1]
redis.call('ZREMRANGEBYSCORE', registry, '-inf', '(' .. now)
redis.call('HSET', wm_key, 'position', ARGV[3], unpack(batch.w))
for k = 1, #batch.w, 2 do if batch.w[k] == 'lsn' then redis.call('PUBLISH', prefix .. 'events', batch.w[k + 1]) end end
return {'ok', redis.call('GET', prefix .. 'replay:request') or ''}
