-- wrk script: POST an OpenAI chat request; WRK_STREAM=1 asks for SSE,
-- WRK_USAGE=1 for the usage chunk too (`stream_options.include_usage`),
-- WRK_MODEL names the model (default gpt-4o-mini), WRK_PAD_BYTES pads the
-- user message with that many bytes of prose (a long prompt).
-- Counts non-2xx answers so a broken proxy cannot look fast.
local stream = os.getenv("WRK_STREAM") == "1"
local tokens = os.getenv("WRK_TOKENS") or "16"
local usage = os.getenv("WRK_USAGE") == "1"
local model = os.getenv("WRK_MODEL") or "gpt-4o-mini"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("WRK_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
local pad = tonumber(os.getenv("WRK_PAD_BYTES") or "0")
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", math.ceil(pad / 45)):sub(1, pad)
wrk.body = '{"model":"' .. model .. '","max_tokens":' .. tokens .. ',"stream":' .. (stream and "true" or "false") ..
  (usage and ',"stream_options":{"include_usage":true}' or '') ..
  ',"messages":[{"role":"system","content":"You are a helpful assistant."},' ..
  '{"role":"user","content":"Write one sentence about load balancers.' .. filler .. '"}]}'

local bad = 0
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
