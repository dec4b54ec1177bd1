-- (d) POST /api/v1/auth/login with the right password. BENCH_USERS holds
-- "username<TAB>password<TAB>fingerprint" lines, at least as many as connections, used
-- round-robin, so one username never has more than a couple of logins in flight (the
-- lockout reserves an attempt per username before it checks the password).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local reqs, n, i = {}, 0, 0

function init(args)
  local headers = { ["Content-Type"] = "application/json" }
  for _, line in ipairs(bench.lines(os.getenv("BENCH_USERS"))) do
    local user, password, fingerprint = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)$")
    assert(user, "bad user line")
    local body = string.format(
      '{"username":"%s","password":"%s","device_name":"bench","device_fingerprint":"%s"}',
      user, password, fingerprint)
    reqs[#reqs + 1] = wrk.format("POST", "/api/v1/auth/login", headers, body)
  end
  n = #reqs
end

function request()
  i = i % n + 1
  return reqs[i]
end

-- Logins are few and slow: counting their statuses costs wrk nothing that matters, and tells
-- a 429 (lockout) from a 401 or a 503.
function response(status, hdrs, body)
  bench.count(status)
end
