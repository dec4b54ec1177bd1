-- A password spray: wrong passwords for random usernames, each from a random client address
-- (X-Forwarded-For, read by a server with TRUSTED_PROXIES=127.0.0.1). Statuses are counted:
-- 401 is a wrong password, 429 a limit, anything else is reported by spray.py.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local headers = { ["Content-Type"] = "application/json" }

function init(args)
  math.randomseed(os.time() + bench_thread_id * 7919)
end

function request()
  local name = string.format("spray%08x%04x", math.random(0, 0x7fffffff), math.random(0, 0xffff))
  headers["X-Forwarded-For"] = string.format(
    "10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  local body = string.format(
    '{"username":"%s","password":"wrong horse battery staple","device_name":"spray"}', name)
  return wrk.format("POST", "/api/v1/auth/login", headers, body)
end

function response(status, hdrs, body)
  bench.count(status)
end
