-- wrk script: signed Telegram updates from 1,000 distinct chats, each with
-- fresh update and message ids (no duplicates), as Telegram delivers them.
local secret = os.getenv("TELEGRAM_WEBHOOK_SECRET") or "s3cret"
-- A second wrk beside this one (another daemon) numbers its updates apart.
local base = tonumber(os.getenv("WRK_ID_BASE") or "0")
local threads = {}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function request()
  counter = counter + 1
  local id = base + (tid or 1) * 100000000 + counter
  local chat = 5000000 + (id % 1000)
  local body = string.format(
    '{"update_id":%d,"message":{"message_id":%d,"from":{"id":%d,"is_bot":false,"first_name":"Load"},'
      .. '"chat":{"id":%d,"type":"private"},"date":1763712000,"text":"load test message %d"}}',
    id, id, chat, chat, id)
  return wrk.format("POST", "/webhook/telegram", {
    ["Content-Type"] = "application/json",
    ["X-Telegram-Bot-Api-Secret-Token"] = secret,
  }, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    errors.status, errors.connect, errors.read, errors.write, errors.timeout))
end
