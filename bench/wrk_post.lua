-- wrk script for bench/ack.py: POST one signed webhook body over and over, closed loop.
--
--   wrk -s bench/wrk_post.lua <url> -- <body file> <X-Hub-Signature-256 value> <stop_at (Unix seconds)>
--
-- Counts 200s and every other status per thread. At stop_at it stops starting
-- requests (delay() parks each connection once its reply is in), so when wrk
-- ends nothing is in flight and every request the server answered was counted:
-- ack.py can then match the 200s against the queue's growth exactly. done()
-- prints one line "WAFLOW_WRK <json>" with the totals.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_usec; } waflow_timeval;
int gettimeofday(waflow_timeval *tv, void *tz);
]]
local tv = ffi.new("waflow_timeval")

local function now()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) + tonumber(tv.tv_usec) / 1e6
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Hub-Signature-256"] = args[2]
  stop_at = tonumber(args[3])
  -- Optional fixed rate for this thread (req/s): requests start on an even schedule, open loop,
  -- as long as a connection is free; 0 or absent means closed loop (each reply starts the next).
  interval = (tonumber(args[4]) or 0) > 0 and 1 / tonumber(args[4]) or 0
  next_slot = 0
  sent, ok, other, first_sent, last_reply = 0, 0, 0, 0, 0
  statuses = {}
end

-- Called before each request: 0 ms until stop_at, then park the connection for an hour.
function delay()
  local t = now()
  if t >= stop_at then
    return 3600000
  end
  if first_sent == 0 then first_sent = t end
  sent = sent + 1
  if interval == 0 then
    return 0
  end
  -- Claim the next free slot of the schedule (never one in the past: a late start is not made up for).
  next_slot = math.max(next_slot + interval, t)
  return math.floor((next_slot - t) * 1000 + 0.5)
end

function response(status, headers, body)
  last_reply = now()
  if status == 200 then
    ok = ok + 1
  else
    other = other + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local sent_, ok_, other_, first, last, by_status = 0, 0, 0, math.huge, 0, {}
  for _, thread in ipairs(threads) do
    sent_ = sent_ + thread:get("sent")
    ok_ = ok_ + thread:get("ok")
    other_ = other_ + thread:get("other")
    local f = thread:get("first_sent")
    if f > 0 and f < first then first = f end
    last = math.max(last, thread:get("last_reply"))
    for status, n in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + n
    end
  end
  if first == math.huge then first = 0 end
  local parts = {}
  for status, n in pairs(by_status) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WAFLOW_WRK {"sent":%d,"ok":%d,"other":%d,"other_statuses":{%s},"completed":%d,' ..
    '"first_sent":%.6f,"last_reply":%.6f,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    sent_, ok_, other_, table.concat(parts, ","), summary.requests, first, last,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
