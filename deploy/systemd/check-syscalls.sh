#!/usr/bin/env bash
# Checks the units' SystemCallFilter= against what the binaries really call:
# runs a collector and an enrolled agent (real checks on loopback: TCP, UDP,
# a refused port) under strace for a while, stops them with SIGTERM as systemd
# does, and lists every syscall outside @system-service minus @privileged and
# @resources (the units' filter, expanded by systemd-analyze). Without systemd
# as PID 1 the filter cannot be applied for real; this is the next best thing.
# Run it after dependency upgrades; it needs root (a refused connect is enough,
# no privileges are used), strace and systemd-analyze. Loopback only.
#
#   bash deploy/systemd/check-syscalls.sh [BIN_DIR]   # default: $CARGO_TARGET_DIR/debug
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-${CARGO_TARGET_DIR:-target}/debug}
for b in portwatch-agent portwatch-collector; do
    [ -x "$bin/$b" ] || { echo "no $bin/$b: build it first" >&2; exit 1; }
done
command -v strace >/dev/null || { echo "strace missing (apt-get install strace)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    if [ -n "${PW_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'cat "$work"/*.log >&2' ERR
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
agent_port=$(port)
http_port=$(port)
closed_port=$(port)
# A TCP service that accepts, and a UDP one that answers.
/usr/bin/python3 -c '
import socket, threading
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(64)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
open("'"$work"'/ports", "w").write(f"{t.getsockname()[1]} {u.getsockname()[1]}\n")
def udp():
    while True:
        d, a = u.recvfrom(2048); u.sendto(b"pong", a)
threading.Thread(target=udp, daemon=True).start()
while True:
    c, _ = t.accept(); c.close()
' &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/ports" ] && break; sleep 0.1; done
read -r tcp_port udp_port <"$work/ports"
cat >"$work/collector.toml" <<TOML
allow_private_targets = true
public_probes = false
[[monitors]]
name = "tcp"
target = "tcp://127.0.0.1:$tcp_port"
interval = "1s"
locations = ["site=lab"]
[[monitors]]
name = "udp"
target = "udp://127.0.0.1:$udp_port"
send = "ping"
interval = "1s"
locations = ["site=lab"]
[[monitors]]
name = "closed"
target = "tcp://127.0.0.1:$closed_port"
interval = "1s"
locations = ["site=lab"]
TOML

trace() { # NAME COMMAND...: strace -f into $work/NAME.trace, PID of the traced program in $traced
    local name=$1
    shift
    strace -f -q -o "$work/$name.trace" "$@" >"$work/$name.log" 2>&1 &
    local s=$!
    pids+=("$s")
    for _ in $(seq 50); do
        # The program itself, once strace has exec'd it.
        traced=$(pgrep -P "$s" -f -- "^$1" || true)
        if [ -n "$traced" ]; then
            # Stopped by the cleanup too: strace on SIGTERM detaches and
            # leaves its tracee running.
            pids+=("$traced")
            return
        fi
        sleep 0.1
    done
    echo "$name did not start" >&2
    exit 1
}
trace collector "$bin/portwatch-collector" serve --data-dir "$work/c" --config "$work/collector.toml" \
    --agent-addr "127.0.0.1:$agent_port" --http-addr "127.0.0.1:$http_port"
collector=$traced
for _ in $(seq 100); do [ -e "$work/c/collector.json" ] && break; sleep 0.2; done
join=$("$bin/portwatch-collector" token create --data-dir "$work/c" --name syscalls --labels site=lab | tail -n 1)
"$bin/portwatch-agent" enroll "$join" --data-dir "$work/a" >/dev/null
trace agent "$bin/portwatch-agent" run --data-dir "$work/a"
# shellcheck disable=SC2034 # read as ${!name} below
agent=$traced
sleep "${PW_SYSCALL_SECONDS:-12}"
# A config reload (SIGHUP), as `systemctl reload` does.
kill -HUP "$collector"
sleep 2
n=$("$bin/portwatch-collector" results --data-dir "$work/c" --monitor tcp --json | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
for name in agent collector; do
    pid=${!name}
    if ! kill -TERM "$pid"; then
        echo "$name ($pid) died during the trace:" >&2
        tail -n 5 "$work/$name.trace" >&2
        exit 1
    fi
    # As TimeoutStopSec=30s allows.
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    sleep 0.5
    grep -qE "^$pid +\+\+\+ exited with 0 \+\+\+" "$work/$name.trace" || {
        echo "$name did not exit 0 on SIGTERM: $(grep -E "^$pid +\+\+\+" "$work/$name.trace")" >&2
        exit 1
    }
done
echo "results stored during the trace: $n"
[ "$n" -gt 0 ] || { echo "no results: the trace did not exercise the checks" >&2; cat "$work"/*.log >&2; exit 1; }

# The filter, expanded: @system-service minus @privileged and @resources.
expand() {
    systemd-analyze syscall-filter "$1" | awk 'NR > 1 && $1 !~ /^#/ {print $1}' | while read -r s; do
        case "$s" in @*) expand "$s" ;; *) echo "$s" ;; esac
    done
}
expand @system-service | sort -u >"$work/allowed"
{ expand @privileged; expand @resources; } | sort -u >"$work/denied"
status=0
for name in collector agent; do
    sed -nE 's/^[0-9]+ +(<\.\.\. )?([a-z0-9_]+)[( ].*/\2/p' "$work/$name.trace" | sort -u >"$work/$name.used"
    outside=$(comm -23 "$work/$name.used" "$work/allowed" | tr '\n' ' ')
    denied=$(comm -12 "$work/$name.used" "$work/denied" | tr '\n' ' ')
    echo "$name: $(wc -l <"$work/$name.used") distinct syscalls; outside @system-service: ${outside:-none}; in ~@privileged @resources: ${denied:-none}"
    if [ -n "$outside$denied" ]; then status=1; fi
    opened=$(grep -oE 'open(at)?\([^"]*"/(proc|sys)/[^"]*"' "$work/$name.trace" | sed -E 's/.*"(.*)"/\1/' | sort -u | tr '\n' ' ')
    echo "$name: /proc and /sys paths opened (ProcSubset=pid hides all of /proc but the pids): ${opened:-none}"
done
exit "$status"
