-- The read API's Redis Functions: every answer is one function call, reading the board, the
-- labels and the watermark together. Loaded by the projector (read_functions.py prepends the
-- library's name line and VERSION); flagged no-writes, so FCALL_RO runs them, on replicas too.

-- page(board, offset, count, total) -> {member, score, rank, ...} in rank order, ties by
-- member. Scores along positions are the same in both orders; only a tie group's members
-- are reversed. A group wholly inside the page is the REV slice reversed; a group the page
-- cuts (the first or the last) is re-read by ascending index.
local function page(board, offset, count, total)
  local out = {}
  if count <= 0 or offset >= total then return out end
  local rev = redis.call('ZRANGE', board, offset, offset + count - 1, 'REV', 'WITHSCORES')
  local n = #rev / 2
  local i = 1
  while i <= n do
    local score = rev[2 * i]
    local j = i
    while j < n and rev[2 * (j + 1)] == score do j = j + 1 end
    local p0, p1 = offset + i - 1, offset + j - 1
    local above
    if i > 1 and j < n then
      above = p0
      for k = j, i, -1 do
        out[#out + 1] = rev[2 * k - 1]; out[#out + 1] = score; out[#out + 1] = above + 1
      end
    else
      above = redis.call('ZCOUNT', board, '(' .. score, '+inf')
      local size = redis.call('ZCOUNT', board, score, score)
      local low = total - above - size
      local members = redis.call('ZRANGE', board, low + p0 - above, low + p1 - above)
      for k = 1, #members do
        out[#out + 1] = members[k]; out[#out + 1] = score; out[#out + 1] = above + 1
      end
    end
    i = j + 1
  end
  return out
end

local function with_names(users, rows)
  if #rows == 0 then return rows end
  local ids = {}
  for k = 1, #rows, 3 do ids[#ids + 1] = rows[k] end
  local names = redis.call('HMGET', users, unpack(ids))
  local out = {}
  for k = 1, #ids do
    local r = 3 * k - 2
    out[#out + 1] = rows[r]; out[#out + 1] = rows[r + 1]
    out[#out + 1] = rows[r + 2]; out[#out + 1] = names[k]
  end
  return out
end

-- The watermark's position and time, or false without one; the error UNAVAILABLE when the
-- projector lists the board as unavailable (its table no longer fits its definition).
-- A rolling window is asked for as "board@YYYY-MM-DD" (its last day): the error WINDOW when
-- Redis holds other windows (before the projector moved them at midnight, or none yet).
local function watermark_of(key, board)
  local mark = redis.call('HMGET', key, 'lsn', 'commit_time', 'unavailable', 'window_day')
  if not mark[1] then return false end
  local at = string.find(board, '@', 1, true)
  if at then
    local day = string.sub(board, at + 1)
    board = string.sub(board, 1, at - 1)
    if mark[4] ~= day then return redis.error_reply('WINDOW ' .. (mark[4] or '')) end
  end
  if mark[3] and mark[3] ~= '' and cjson.decode(mark[3])[board] then
    return redis.error_reply('UNAVAILABLE ' .. board)
  end
  return mark
end

-- KEYS board, users, watermark; ARGV offset, limit, board name.
-- -> false without a watermark, else {lsn, commit_time, total, {member, score, rank, name...}}
local function board(KEYS, ARGV)
  local mark = watermark_of(KEYS[3], ARGV[3])
  if not mark or mark.err then return mark end
  local total = redis.call('ZCARD', KEYS[1])
  local rows = page(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), total)
  return {mark[1], mark[2] or '', total, with_names(KEYS[2], rows)}
end

-- KEYS board, users, watermark; ARGV user, around, board name.
-- -> false, or {lsn, commit_time, total, name, position|false, first position, rows}
-- A member's place: {name, position|false, first position, rows} with ``around`` neighbours.
local function place(key, users, user, around, total)
  local name = redis.call('HGET', users, user)
  local score = redis.call('ZSCORE', key, user)
  if not score then return {name, false, 0, {}} end
  local above = redis.call('ZCOUNT', key, '(' .. score, '+inf')
  local size = redis.call('ZCOUNT', key, score, score)
  local position = above + redis.call('ZRANK', key, user) - (total - above - size)
  local first = position - around
  if first < 0 then first = 0 end
  local rows = page(key, first, position + around - first + 1, total)
  return {name, position, first, with_names(users, rows)}
end

local function standing(KEYS, ARGV)
  local mark = watermark_of(KEYS[3], ARGV[3])
  if not mark or mark.err then return mark end
  local key = KEYS[1]
  local total = redis.call('ZCARD', key)
  local at = place(key, KEYS[2], ARGV[1], tonumber(ARGV[2]), total)
  return {mark[1], mark[2] or '', total, at[1], at[2], at[3], at[4]}
end

-- KEYS board, users, watermark; ARGV board name, member...
-- -> false, or {lsn, commit_time, total, {name, position|false, first, rows} per member},
-- each member with one neighbour either side (the watched members' streams).
local function watch(KEYS, ARGV)
  local mark = watermark_of(KEYS[3], ARGV[1])
  if not mark or mark.err then return mark end
  local key = KEYS[1]
  local total = redis.call('ZCARD', key)
  local out = {}
  for i = 2, #ARGV do out[#out + 1] = place(key, KEYS[2], ARGV[i], 1, total) end
  return {mark[1], mark[2] or '', total, out}
end

-- KEYS users, watermark, board...; ARGV user, board name.
-- -> false, or {lsn, commit_time, name, {total, score|false, rank|false} per board}
local function user(KEYS, ARGV)
  local mark = watermark_of(KEYS[2], ARGV[2])
  if not mark or mark.err then return mark end
  local member = ARGV[1]
  local out = {}
  for k = 3, #KEYS do
    local key = KEYS[k]
    local score = redis.call('ZSCORE', key, member)
    out[#out + 1] = redis.call('ZCARD', key)
    out[#out + 1] = score
    if score then
      out[#out + 1] = redis.call('ZCOUNT', key, '(' .. score, '+inf') + 1
    else
      out[#out + 1] = false
    end
  end
  return {mark[1], mark[2] or '', redis.call('HGET', KEYS[1], member), out}
end

-- KEYS board, users, watermark; ARGV board name, member...
-- -> false, or {lsn, commit_time, total, {score|false, rank|false, name|false} per member}
-- (rank: the competition rank on the whole board, 1 + the members scoring more)
local function group(KEYS, ARGV)
  local mark = watermark_of(KEYS[3], ARGV[1])
  if not mark or mark.err then return mark end
  local key, users = KEYS[1], KEYS[2]
  local members = {unpack(ARGV, 2)}
  local scores = redis.call('ZMSCORE', key, unpack(members))
  local names = redis.call('HMGET', users, unpack(members))
  local out = {}
  for i = 1, #members do
    local score = scores[i]
    out[#out + 1] = score
    if score then
      out[#out + 1] = redis.call('ZCOUNT', key, '(' .. score, '+inf') + 1
    else
      out[#out + 1] = false
    end
    out[#out + 1] = names[i]
  end
  return {mark[1], mark[2] or '', redis.call('ZCARD', key), out}
end

-- KEYS watermark -> {lsn|false, commit_time|false, unavailable boards|false}: readiness,
-- through a function, so a Redis without this library is not reported ready for answers it
-- cannot give.
local function watermark(KEYS, ARGV)
  return redis.call('HMGET', KEYS[1], 'lsn', 'commit_time', 'unavailable')
end

local function register(name, callback)
  redis.register_function{
    function_name = 'leaderboard_' .. name .. '_' .. VERSION,
    callback = callback,
    flags = {'no-writes'},
  }
end

register('board', board)
register('standing', standing)
register('user', user)
register('group', group)
register('watch', watch)
register('watermark', watermark)
