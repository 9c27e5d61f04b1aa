-- wrk script for bench/run.py: POST a small OpenAI chat request.
-- BENCH_STREAM=1 asks for a stream; BENCH_AUTH sets a bearer token (LiteLLM's master key).
-- No response() callback: defining one makes wrk parse every body, which would slow it down.
local stream = os.getenv("BENCH_STREAM") == "1"
local auth = os.getenv("BENCH_AUTH")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
-- BENCH_BODY, when set, is the whole request (another front's dialect: bench/targets.py FRONTS).
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
else
  wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16'
    .. (stream and ',"stream":true' or '') .. '}'
end

