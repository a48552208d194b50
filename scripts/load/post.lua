-- wrk script: POSTs the file named by $WRK_BODY_FILE (Content-Type $WRK_CONTENT_TYPE, default
-- application/json) and prints, when done, how many responses were not 2xx.
--   WRK_BODY_FILE=body.json wrk --latency -s scripts/load/post.lua http://127.0.0.1:8080/v1/search
local path = os.getenv("WRK_BODY_FILE")
assert(path and path ~= "", "set WRK_BODY_FILE to the file holding the request body")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local ctype = os.getenv("WRK_CONTENT_TYPE")
wrk.headers["Content-Type"] = (ctype and ctype ~= "") and ctype or "application/json"

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

-- Per-thread counter, read back in done().
non2xx = 0

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local n = 0
   for _, t in ipairs(threads) do
      n = n + (t:get("non2xx") or 0)
   end
   io.write(string.format("non-2xx responses: %d\n", n))
end
