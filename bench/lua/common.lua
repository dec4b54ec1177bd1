-- Shared by every bench script: thread numbering, token/user pool files split between
-- wrk threads, per-status counts, and a done() hook that prints one JSON line for run.py;
-- then the pools themselves (pools.lua).
-- Each script loads it with dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua").

bench = {}
statuses = {}      -- per thread: HTTP status -> count (only scripts with a response() hook)
bench_starved = 0  -- per thread: requests sent with an empty refresh-token queue
bench_thread_id = 0

local threads = {}

function setup(thread)
  thread:set("bench_thread_id", #threads)
  table.insert(threads, thread)
end

-- The non-empty lines of `path` that belong to this thread: line i goes to thread
-- i % BENCH_THREADS, so that no two threads share a refresh-token chain.
function bench.lines(path)
  assert(path and path ~= "", "pool file not set")
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  local out, i = {}, 0
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if line ~= "" then
      if i % nthreads == bench_thread_id then
        out[#out + 1] = line
      end
      i = i + 1
    end
  end
  f:close()
  assert(#out > 0, "empty pool file " .. path)
  return out
end

function bench.count(status)
  statuses[status] = (statuses[status] or 0) + 1
end

-- A FIFO of strings.
function bench.queue(items)
  local q = { head = 1, tail = 0, items = {} }
  for _, v in ipairs(items or {}) do
    q.tail = q.tail + 1
    q.items[q.tail] = v
  end
  function q:push(v)
    self.tail = self.tail + 1
    self.items[self.tail] = v
  end
  function q:pop()
    if self.head > self.tail then
      return nil
    end
    local v = self.items[self.head]
    self.items[self.head] = nil
    self.head = self.head + 1
    return v
  end
  return q
end

function done(summary, latency, requests)
  local counts, starved = {}, 0
  for _, t in ipairs(threads) do
    local st = t:get("statuses")
    if st then
      for k, v in pairs(st) do
        counts[tostring(k)] = (counts[tostring(k)] or 0) + v
      end
    end
    starved = starved + (t:get("bench_starved") or 0)
  end
  local parts = {}
  for k, v in pairs(counts) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%.0f,"mean":%.1f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f},'
      .. '"statuses":{%s},"starved":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max,
    table.concat(parts, ","), starved))
end

dofile(os.getenv("BENCH_LUA_DIR") .. "/pools.lua")
