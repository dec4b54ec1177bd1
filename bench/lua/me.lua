-- (b) GET /api/v1/auth/me with a pool of access tokens (BENCH_TOKENS, one a line), round-robin.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local next_request

function init(args)
  next_request = pools.cycle(pools.get_requests(os.getenv("BENCH_TOKENS")))
end

function request()
  return next_request()
end
