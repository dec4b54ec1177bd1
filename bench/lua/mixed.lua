-- (f) Mixed load for the memory reading: a weighted random choice per request among
-- /health/live, /auth/me (BENCH_TOKENS), /auth/refresh (BENCH_REFRESH, live chains as in
-- refresh.lua) and /auth/login (BENCH_USERS, without a fingerprint so that no login revokes
-- a session the other requests use). BENCH_MIX is "health:25,me:50,refresh:20,login:5".
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local health, next_me, next_login, chains
local kinds, bounds, total = {}, {}, 0

function init(args)
  health = wrk.format("GET", "/health/live")
  next_me = pools.cycle(pools.get_requests(os.getenv("BENCH_TOKENS")))
  next_login = pools.cycle(pools.login_requests(os.getenv("BENCH_USERS"), "bench-mixed", false))
  chains = pools.refresh_chains(os.getenv("BENCH_REFRESH"))
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
    return next_me()
  elseif kind == "login" then
    return next_login()
  elseif kind == "refresh" then
    local token = chains:take()
    if token then
      return pools.refresh_request(token)
    end
  end
  return health
end

function response(status, hdrs, body)
  bench.count(status)
  -- Refresh and login answers both carry a live refresh token: both feed the chains.
  chains:feed(status, body)
end
