-- (b) GET /api/v1/auth/me with a pool of access tokens (BENCH_TOKENS, one a line), round-robin.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local reqs, n, i = {}, 0, 0

function init(args)
  for _, token in ipairs(bench.lines(os.getenv("BENCH_TOKENS"))) do
    reqs[#reqs + 1] = wrk.format("GET", "/api/v1/auth/me", { ["Authorization"] = "Bearer " .. token })
  end
  n = #reqs
end

function request()
  i = i % n + 1
  return reqs[i]
end
