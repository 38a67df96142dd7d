#!/bin/sh
# Idle CPU of `convagent tui` over 10 s: runs the release binary in a
# detached tmux pane on the current store (XDG_* as set), lets it settle,
# then reads the process's user+system CPU ticks from /proc before and
# after 10 idle seconds. Usage: benches/tui-idle.sh [seconds]
set -eu
secs="${1:-10}"
bin="${CARGO_TARGET_DIR:-target}/release/convagent"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
session="convagent-idle-$$"
tmux new-session -d -s "$session" -x 120 -y 32 "$bin tui"
trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT
sleep 2
pid=$(pgrep -n -f "$bin tui")
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
sleep "$secs"
after=$(ticks)
awk -v d="$((after - before))" -v hz="$hz" -v s="$secs" \
  'BEGIN { printf "tui idle: %d ticks (%.2f s CPU) in %d s = %.2f%% of one core\n", d, d / hz, s, 100 * d / hz / s }'
