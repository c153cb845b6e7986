-- Closed-loop requests for wrk, configured by bench/wrk_load.py through environment variables:
--   LOAD_METHOD, LOAD_PATH   the request; "{id}" in the path becomes a random line of LOAD_IDS_FILE
--   LOAD_BODY                optional body; "{n}" becomes a number unique to the request, "{now_ms}" the time
--   LOAD_AUTH                optional Authorization header; several, comma-separated, are picked at random
-- done() prints one line "WRK_JSON {...}" with the counts and latency percentiles (microseconds).

local method = os.getenv("LOAD_METHOD") or "GET"
local path = os.getenv("LOAD_PATH") or "/"
local body = os.getenv("LOAD_BODY")
local auths = {}
for value in string.gmatch(os.getenv("LOAD_AUTH") or "", "[^,]+") do table.insert(auths, value) end
local ids_file = os.getenv("LOAD_IDS_FILE")

local threads = {}
local ids = {}
local counter = 0

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  if ids_file then
    for line in io.lines(ids_file) do
      if #line > 0 then table.insert(ids, line) end
    end
  end
  math.randomseed(os.time() + thread_index)
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local p = path
  if #ids > 0 then
    p = p:gsub("{id}", ids[math.random(#ids)])
  end
  local b = nil
  if body then
    b = body:gsub("{n}", tostring(thread_index * 1000000000 + counter))
    b = b:gsub("{now_ms}", tostring(os.time() * 1000))
  end
  if #auths > 0 then
    wrk.headers["Authorization"] = auths[math.random(#auths)]
  end
  return wrk.format(method, p, nil, b)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
