-- (g), (h) of bench/scale.py: GET BENCH_PATH (e.g. /api/v1/auth/events) with a pool of access
-- tokens (BENCH_TOKENS, one a line), round-robin.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local next_request

function init(args)
  next_request = pools.cycle(pools.get_requests(os.getenv("BENCH_TOKENS"), os.getenv("BENCH_PATH")))
end

function request()
  return next_request()
end
