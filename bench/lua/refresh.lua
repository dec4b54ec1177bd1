-- (c) POST /api/v1/auth/refresh, every request on a live token chain. BENCH_TOKENS holds one
-- refresh token a line (more than there are connections). request() pops the oldest token;
-- response() takes the new refresh token out of the body and queues it. A token is never
-- presented twice, so reuse detection never fires. If a response is lost, so is its chain;
-- with the queue empty a request goes out with a dud token and counts as an error.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local queue
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  queue = bench.queue(bench.lines(os.getenv("BENCH_TOKENS")))
end

function request()
  local token = queue:pop()
  if not token then
    bench_starved = bench_starved + 1
    token = "starved"
  end
  return wrk.format("POST", "/api/v1/auth/refresh", headers, '{"refresh_token":"' .. token .. '"}')
end

function response(status, hdrs, body)
  bench.count(status)
  if status == 200 then
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then
      queue:push(token)
    end
  end
end
