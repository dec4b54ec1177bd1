-- (a) GET /health/live: the ceiling. No response() hook, so wrk skips parsing bodies.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local req

function init(args)
  req = wrk.format("GET", "/health/live")
end

function request()
  return req
end
