-- wrk script for bench/controls_overhead.py:
--   wrk ... -s controls_overhead.lua URL -- <key prefix> <single|quoted>
-- Every request carries a fresh Idempotency-Key (prefix, thread, counter): a repeated key would
-- be answered from the stored response and flatter the controlled rate.
-- single: POST the inline-execution body to the URL's path (/v1/executions or /bench/echo).
-- quoted: POST /v1/quotes, then POST /v1/executions {"quote_id"} with each quote returned,
--         counting the executions that succeeded (printed by done()).

wrk.method = "POST"
wrk.body = '{"tool": "sandbox.echo", "params": {"message": "hi"}}'
wrk.headers["Content-Type"] = "application/json"

local threads = {}
local prefix, mode = "run", "single"
local counter = 0
local headers = {}
local quotes = {}
executions_ok = 0 -- global, so that done() can read it with thread:get

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_no", #threads)
end

local function quoted_response(status, _, body)
   if status ~= 200 then
      return
   end
   local quote_id = body:match('^{"id":"(q_[^"]+)"')
   if quote_id then
      table.insert(quotes, quote_id)
   elseif body:sub(1, 11) == '{"id":"exe_' then
      executions_ok = executions_ok + 1
   end
end

function init(args)
   prefix = (args[1] or "run") .. "-" .. tostring(thread_no)
   mode = args[2] or "single"
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   -- wrk parses response bodies only when `response` exists: define it only where needed.
   if mode == "quoted" then
      response = quoted_response
   end
end

function request()
   counter = counter + 1
   headers["Idempotency-Key"] = prefix .. "-" .. counter
   if mode == "quoted" then
      local quote_id = table.remove(quotes)
      if quote_id then
         return wrk.format("POST", "/v1/executions", headers, '{"quote_id":"' .. quote_id .. '"}')
      end
      return wrk.format("POST", "/v1/quotes", headers, wrk.body)
   end
   return wrk.format(nil, nil, headers, nil)
end

function done()
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (thread:get("executions_ok") or 0)
   end
   io.write(string.format("executions_ok: %d\n", total))
end
