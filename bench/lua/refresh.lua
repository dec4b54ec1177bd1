-- (c) POST /api/v1/auth/refresh, every request on a live token chain (pools.refresh_chains).
-- BENCH_TOKENS holds one refresh token a line (more than there are connections). With no
-- token left, a request goes out with a dud token and counts as an error.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local chains

function init(args)
  chains = pools.refresh_chains(os.getenv("BENCH_TOKENS"))
end

function request()
  return pools.refresh_request(chains:take() or "starved")
end

function response(status, hdrs, body)
  bench.count(status)
  chains:feed(status, body)
end
