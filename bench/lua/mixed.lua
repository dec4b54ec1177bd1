-- (f) Mixed load for the memory reading: a weighted random choice per request among
-- /health/live, /auth/me (BENCH_TOKENS), /auth/refresh (BENCH_REFRESH, live chains as in
-- refresh.lua) and /auth/login (BENCH_USERS, without a fingerprint so that no login revokes
-- a session the other requests use). BENCH_MIX is "health:25,me:50,refresh:20,login:5".
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local health, me, logins, queue = nil, {}, {}, nil
local mi, li = 0, 0
local kinds, bounds, total = {}, {}, 0
local json = { ["Content-Type"] = "application/json" }

function init(args)
  health = wrk.format("GET", "/health/live")
  for _, token in ipairs(bench.lines(os.getenv("BENCH_TOKENS"))) do
    me[#me + 1] = wrk.format("GET", "/api/v1/auth/me", { ["Authorization"] = "Bearer " .. token })
  end
  for _, line in ipairs(bench.lines(os.getenv("BENCH_USERS"))) do
    local user, password = line:match("^([^\t]+)\t([^\t]+)")
    local body = string.format(
      '{"username":"%s","password":"%s","device_name":"bench-mixed"}', user, password)
    logins[#logins + 1] = wrk.format("POST", "/api/v1/auth/login", json, body)
  end
  queue = bench.queue(bench.lines(os.getenv("BENCH_REFRESH")))
  for kind, weight in string.gmatch(os.getenv("BENCH_MIX") or "", "(%a+):(%d+)") do
    total = total + tonumber(weight)
    kinds[#kinds + 1] = kind
    bounds[#bounds + 1] = total
  end
  assert(total > 0, "BENCH_MIX has no weights")
  math.randomseed(1234 + bench_thread_id)
end

local function pick()
  local r = math.random() * total
  for k = 1, #bounds do
    if r < bounds[k] then
      return kinds[k]
    end
  end
  return kinds[#kinds]
end

function request()
  local kind = pick()
  if kind == "me" then
    mi = mi % #me + 1
    return me[mi]
  elseif kind == "login" then
    li = li % #logins + 1
    return logins[li]
  elseif kind == "refresh" then
    local token = queue:pop()
    if token then
      return wrk.format("POST", "/api/v1/auth/refresh", json, '{"refresh_token":"' .. token .. '"}')
    end
    bench_starved = bench_starved + 1
  end
  return health
end

function response(status, hdrs, body)
  bench.count(status)
  if status == 200 then
    -- Refresh and login answers both carry a live refresh token: both feed the queue.
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then
      queue:push(token)
    end
  end
end
