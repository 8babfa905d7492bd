-- Apply one batch of board deltas and move the watermark, atomically.
--
-- KEYS: 1 watermark, 2 registry of board keys, 3 replay request, 4 owner (fencing token),
--       then every other key the batch touches (all declared: in a Redis Cluster they share
--       the prefix's hash tag, so one node runs the whole script).
-- ARGV: 1 expected position ("" = no watermark may exist), 2 new position,
--       3 the batch as JSON (one argument: cheap to send, decoded in C by cjson), where a
--       key is its index in KEYS:
--   {"w": [field, value, ...],                      watermark fields
--    "cb": [key, ...],                              registered boards to remove (TRUNCATE)
--    "cl": [label hash, ...],                       label hashes to empty first
--    "l": [[label hash, [member, label, ...], [member, ...]], ...]   labels to set / delete
--    "b": [[key, expireat or "", [member, ...], [delta, ...], raw], ...],  board deltas; raw = 1:
--         a key of boards being built: any score kept, no expiry, not registered
--    "s": {"started": marker, "u": [key, ...], "x": [[key, members], ...],
--          "m": [[base, delta, board, expireat or ""], ...]} or absent}
--         the swap of built boards, applied last: every key in "x" must hold its members
--         (else the error "BUILD LOST"); boards "u" go; each board becomes base + delta
--         (scores at or below 0 dropped), registered with its expiry.
--    "a": [[key, old or 0, [source, ...], [weight, ...], expireat], ...] or absent}
--         rolling windows moved to a new day (projector/core/windows.py), after the
--         deltas and the swap: key = sum of the sources times their weights, scores at or
--         below 0 dropped; the old window key goes.
--   4 the channel that hears each new watermark LSN (readers' live updates),
--   5 the writer's fencing token: it must be the owner's (set when a process takes the
--     slot over), so a paused or cut-off former owner that wakes up writes nothing.
-- Returns {"ok", replay request id or ""}, or the error "POSITION <found>" when the
-- stored position is not the expected one (lost data or a second writer), or "FENCED".
local wm_key, registry = KEYS[1], KEYS[2]
-- The owner first: a fenced writer goes back to standing by; it must not take the position
-- the new owner moved on for lost data (which would make it rebuild once it drives again).
local owner = redis.call('GET', KEYS[4]) or ''
if owner ~= ARGV[5] then
  return redis.error_reply('FENCED ' .. owner)
end
local found = redis.call('HGET', wm_key, 'position')
if not found then found = '' end
if found ~= ARGV[1] then
  return redis.error_reply('POSITION ' .. found)
end
local batch = cjson.decode(ARGV[3])
local CHUNK = 2000
local swap = batch.s
if swap then
  if redis.call('EXISTS', KEYS[swap.started]) == 0 then
    return redis.error_reply('BUILD LOST')
  end
  for x = 1, #swap.x do
    if redis.call('ZCARD', KEYS[swap.x[x][1]]) ~= swap.x[x][2] then
      return redis.error_reply('BUILD LOST ' .. KEYS[swap.x[x][1]])
    end
  end
end

-- Remove registered boards (the writer read them from the registry and declared them).
local function unlink_boards(indexes)
  for k = 1, #indexes do
    redis.call('UNLINK', KEYS[indexes[k]])
    redis.call('ZREM', registry, KEYS[indexes[k]])
  end
end

unlink_boards(batch.cb)
for c = 1, #batch.cl do
  redis.call('UNLINK', KEYS[batch.cl[c]])
end

for li = 1, #batch.l do
  local hash, set, del = KEYS[batch.l[li][1]], batch.l[li][2], batch.l[li][3]
  for s = 1, #set, 2 * CHUNK do
    redis.call('HSET', hash, unpack(set, s, math.min(#set, s + 2 * CHUNK - 1)))
  end
  for s = 1, #del, CHUNK do
    redis.call('HDEL', hash, unpack(del, s, math.min(#del, s + CHUNK - 1)))
  end
end

local boards = batch.b
for bi = 1, #boards do
  local board = boards[bi]
  local key, expireat, members, deltas = KEYS[board[1]], board[2], board[3], board[4]
  local raw = board[5] == 1
  local n = #members
  local fresh = true  -- no member had a score: the key may be new and needs its expiry
  for s = 1, n, CHUNK do
    local e = math.min(n, s + CHUNK - 1)
    local scores = redis.call('ZMSCORE', key, unpack(members, s, e))
    local add, rem, na, nr = {}, {}, 0, 0
    for j = s, e do
      local current = scores[j - s + 1]
      local score = deltas[j]
      if current then
        fresh = false
        score = score + tonumber(current)
      end
      if score > 0 or raw then
        add[na + 1] = score
        add[na + 2] = members[j]
        na = na + 2
      else
        nr = nr + 1
        rem[nr] = members[j]
      end
    end
    if na > 0 then redis.call('ZADD', key, unpack(add, 1, na)) end
    if nr > 0 then redis.call('ZREM', key, unpack(rem, 1, nr)) end
  end
  if fresh and not raw then
    if expireat == '' then
      redis.call('ZADD', registry, 'inf', key)
    else
      redis.call('ZADD', registry, expireat, key)
      redis.call('EXPIREAT', key, expireat)
    end
  end
end

if swap then
  unlink_boards(swap.u)
  for m = 1, #swap.m do
    local base, delta, final = KEYS[swap.m[m][1]], KEYS[swap.m[m][2]], KEYS[swap.m[m][3]]
    local expireat = swap.m[m][4]
    redis.call('UNLINK', final)
    local has_base, has_delta = redis.call('EXISTS', base), redis.call('EXISTS', delta)
    if has_base == 1 and has_delta == 1 then
      redis.call('ZUNIONSTORE', final, 2, base, delta)
    elseif has_base == 1 then
      redis.call('RENAME', base, final)
    elseif has_delta == 1 then
      redis.call('RENAME', delta, final)
    end
    redis.call('UNLINK', base, delta)
    redis.call('ZREMRANGEBYSCORE', final, '-inf', 0)
    if redis.call('EXISTS', final) == 1 then
      if expireat == '' then
        redis.call('PERSIST', final)
        redis.call('ZADD', registry, 'inf', final)
      else
        redis.call('EXPIREAT', final, expireat)
        redis.call('ZADD', registry, expireat, final)
      end
    end
  end
  redis.call('UNLINK', KEYS[swap.started])
end

-- Rolling windows (projector/core/windows.py): each new window from the old one and the
-- day buckets entering and leaving it, or from its day buckets alone.
local windows = batch.a
if windows then
  for a = 1, #windows do
    local step = windows[a]
    local key, sources, weights, expireat = KEYS[step[1]], step[3], step[4], step[5]
    if #sources > 0 then
      local args = {'ZUNIONSTORE', key, #sources}
      for s = 1, #sources do args[#args + 1] = KEYS[sources[s]] end
      args[#args + 1] = 'WEIGHTS'
      for s = 1, #weights do args[#args + 1] = weights[s] end
      redis.call(unpack(args))
      redis.call('ZREMRANGEBYSCORE', key, '-inf', 0)
    else
      redis.call('UNLINK', key)
    end
    if step[2] ~= 0 and KEYS[step[2]] ~= key then
      redis.call('UNLINK', KEYS[step[2]])
      redis.call('ZREM', registry, KEYS[step[2]])
    end
    if redis.call('EXISTS', key) == 1 then
      redis.call('EXPIREAT', key, expireat)
      redis.call('ZADD', registry, expireat, key)
    else
      redis.call('ZREM', registry, key)
    end
  end
end

local now = redis.call('TIME')[1]
redis.call('ZREMRANGEBYSCORE', registry, '-inf', '(' .. now)
redis.call('HSET', wm_key, 'position', ARGV[2], unpack(batch.w))
for k = 1, #batch.w, 2 do if batch.w[k] == 'lsn' then redis.call('PUBLISH', ARGV[4], batch.w[k + 1]) end end
return {'ok', redis.call('GET', KEYS[3]) or ''}
