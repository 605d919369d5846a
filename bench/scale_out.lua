-- wrk script for bench/scale_out.py:
--   wrk ... -s scale_out.lua URL/v1/executions -- <key prefix> <api key> [<api key> ...]
-- Every request is an inline-quoted `sandbox.echo` execution with a fresh Idempotency-Key,
-- and the API keys (one per tenant) take turns, so the load is spread over their tenants.

wrk.method = "POST"
wrk.body = '{"tool": "sandbox.echo", "params": {"message": "hi"}}'
wrk.headers["Content-Type"] = "application/json"

local threads = {}
local prefix = "run"
local keys = {}
local counter = 0
local headers = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_no", #threads)
end

function init(args)
   prefix = (args[1] or "run") .. "-" .. tostring(thread_no)
   for i = 2, #args do
      table.insert(keys, "Bearer " .. args[i])
   end
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
end

function request()
   counter = counter + 1
   headers["Idempotency-Key"] = prefix .. "-" .. counter
   headers["Authorization"] = keys[(counter % #keys) + 1]
   return wrk.format(nil, nil, headers, nil)
end
