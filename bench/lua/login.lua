-- (d) POST /api/v1/auth/login with the right password. BENCH_USERS holds
-- "username<TAB>password<TAB>fingerprint" lines, at least as many as connections, used
-- round-robin, so one username never has more than a couple of logins in flight (the
-- lockout reserves an attempt per username before it checks the password).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local next_request

function init(args)
  next_request = pools.cycle(pools.login_requests(os.getenv("BENCH_USERS"), "bench", true))
end

function request()
  return next_request()
end

-- Logins are few and slow: counting their statuses costs wrk nothing that matters, and tells
-- a 429 (lockout) from a 401 or a 503.
function response(status, hdrs, body)
  bench.count(status)
end
