#!/bin/sh
# Load benchmark, measurement 1 of issue 10: the daemon's own /health as the
# ceiling of its HTTP stack, then signed Telegram webhooks from 1,000
# distinct chats with the whole pipeline running behind them (an LLM that
# refuses at once -> the fallback reply, once per conversation; dry-run
# sends; traces). wrk (Debian's `wrk`) is the load generator; both share the
# machine's cores. One run prints both, and their ratio.
#
#   benches/load/run.sh [SECONDS] [CONNECTIONS]
set -eu
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-64}
command -v wrk >/dev/null || { echo "run.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/convagent"

home=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$home"' EXIT
export HOME="$home" XDG_DATA_HOME="$home/data" XDG_STATE_HOME="$home/state" XDG_CONFIG_HOME="$home/config"
export TELEGRAM_BOT_TOKEN=1:bench TELEGRAM_WEBHOOK_SECRET=s3cret CONVAGENT_DRY_RUN=1
export CONVAGENT_LLM_CHAIN=ollama OLLAMA_HOST=http://127.0.0.1:9 CONVAGENT_LOG=warn

"$bin" serve --listen 127.0.0.1:0 2>"$home/serve.log" &
pid=$!
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$home/serve.log")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$home/serve.log" >&2; exit 1; }

rps() { sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p'; }
health=$(wrk -t2 -c"$conns" -d"${secs}s" "$url/health" | rps)
wrk -t2 -c"$conns" -d"${secs}s" --latency -s benches/load/telegram_1000_chats.lua \
  "$url/webhook/telegram" >"$home/acks.txt"
acks=$(rps <"$home/acks.txt")
rss=$(ps -o rss= -p "$pid" | tr -d ' ')

echo "health:     $health req/s (the HTTP stack's ceiling, same run)"
echo "acks:       $acks signed updates/s from 1,000 chats, pipeline behind"
echo "ratio:      $(echo "$acks $health" | awk '{ printf "%.3f", $1 / $2 }')"
grep -E '^ +(50|90|99)%' "$home/acks.txt" | sed -e 's/^ */ack latency p/' -e 's/%//'
grep -E '^non2xx' "$home/acks.txt"
echo "daemon RSS: $((rss / 1024)) MB after the load"
