-- The pools the scenarios draw from, in one place: access tokens for /auth/me, users for
-- /auth/login, and live refresh-token chains for /auth/refresh. Loaded by common.lua, so
-- every script has `pools` once it has loaded common.lua. Each reads only this wrk thread's
-- share of its file (bench.lines).

pools = {}

local json = { ["Content-Type"] = "application/json" }

-- A function that returns the items of `items` round-robin, one per call.
function pools.cycle(items)
  local n, i = #items, 0
  assert(n > 0, "empty pool")
  return function()
    i = i % n + 1
    return items[i]
  end
end

-- GET requests to `url_path` (default /api/v1/auth/me), one per access token (one a line)
-- in `path`.
function pools.get_requests(path, url_path)
  local reqs = {}
  for _, token in ipairs(bench.lines(path)) do
    reqs[#reqs + 1] = wrk.format(
      "GET", url_path or "/api/v1/auth/me", { ["Authorization"] = "Bearer " .. token })
  end
  return reqs
end

-- POST /api/v1/auth/login requests with the right password, from the
-- "username<TAB>password<TAB>fingerprint" lines of `path`. With `with_fingerprint` the
-- login names its device (and replaces that device's session); without, it is a new session.
function pools.login_requests(path, device_name, with_fingerprint)
  local reqs = {}
  for _, line in ipairs(bench.lines(path)) do
    local body
    if with_fingerprint then
      local user, password, fingerprint = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)$")
      assert(user, "bad user line")
      body = string.format(
        '{"username":"%s","password":"%s","device_name":"%s","device_fingerprint":"%s"}',
        user, password, device_name, fingerprint)
    else
      local user, password = line:match("^([^\t]+)\t([^\t]+)")
      body = string.format(
        '{"username":"%s","password":"%s","device_name":"%s"}', user, password, device_name)
    end
    reqs[#reqs + 1] = wrk.format("POST", "/api/v1/auth/login", json, body)
  end
  return reqs
end

-- Live refresh-token chains from the refresh tokens (one a line) of `path`. take() hands out
-- the oldest token, or nil (counted in bench_starved) when none is left; feed() queues the
-- refresh token of a 200 answer (a refresh's or a login's). A token is never handed out
-- twice, so reuse detection never fires; a lost response loses its chain.
function pools.refresh_chains(path)
  local chains = { queue = bench.queue(bench.lines(path)) }
  function chains:take()
    local token = self.queue:pop()
    if not token then
      bench_starved = bench_starved + 1
    end
    return token
  end
  function chains:feed(status, body)
    if status == 200 then
      local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
      if token then
        self.queue:push(token)
      end
    end
  end
  return chains
end

-- The POST /api/v1/auth/refresh request that presents `token`.
function pools.refresh_request(token)
  return wrk.format("POST", "/api/v1/auth/refresh", json, '{"refresh_token":"' .. token .. '"}')
end
