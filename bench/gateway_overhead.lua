-- wrk script for bench/gateway_overhead.py:
--   wrk ... -s gateway_overhead.lua URL -- <true|false> <model> [idempotency key prefix]
-- POSTs the same chat body (max_tokens 16, stream true with stream_options include_usage,
-- or false) to the URL's path. With a
-- prefix, every request carries a fresh Idempotency-Key (prefix, thread, counter).
-- Every 200 body is checked: a stream must end with `data: [DONE]` and carry the stub's usage,
-- a completion must carry the usage and finish_reason "stop"; failures are counted as
-- bad_bodies. done() prints the exact latency percentiles and the counters the bench parses.

local threads = {}
local stream, prefix = false, nil
local counter = 0
local headers = {}
local req = nil
bad_bodies = 0 -- global, so that done() can read it with thread:get

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_no", #threads)
end

function init(args)
   stream = args[1] == "true"
   local model = args[2] or "bench"
   if args[3] and args[3] ~= "" then
      prefix = args[3] .. "-" .. tostring(thread_no)
   end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   local options = stream and ',"stream_options":{"include_usage":true}' or ''
   wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":'
      .. '"Say hello to the benchmark."}],"max_tokens":16,"stream":' .. tostring(stream)
      .. options .. '}'
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   req = wrk.format()
end

function request()
   if prefix then
      counter = counter + 1
      headers["Idempotency-Key"] = prefix .. "-" .. counter
      return wrk.format(nil, nil, headers, nil)
   end
   return req
end

local function has(body, text)
   return body:find(text, 1, true) ~= nil
end

function response(status, _, body)
   if status ~= 200 then
      return
   end
   local ok = has(body, '"completion_tokens":5')
   if stream then
      ok = ok and body:sub(-14) == "data: [DONE]\n\n"
   else
      ok = ok and has(body, '"finish_reason":"stop"')
   end
   if not ok then
      bad_bodies = bad_bodies + 1
   end
end

function done(summary, latency, _)
   local bad = 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("bad_bodies") or 0)
   end
   local e = summary.errors
   io.write(string.format("bench: requests %d duration_us %d non2xx %d socket_errors %d"
      .. " bad_bodies %d p50_us %d p90_us %d p99_us %d\n",
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      bad, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
