#!/usr/bin/env bash
# CI step for the Debian packages (issue 9): builds portwatch-agent and
# portwatch-collector .deb files from the binaries the test build already made
# (no second, release build), installs them with dpkg, checks what the
# packages promise, walks the bastion install path with the installed binaries
# on loopback, reinstalls, purges, and checks the purge left nothing behind.
# Also validates the Kubernetes manifests (deploy/k8s/validate.sh) and builds
# the container images' static binaries (deploy/check-static.sh).
#
# Needs root (dpkg). Safe on a CI machine without systemd as PID 1, and safe to
# run again: it refuses to touch a portwatch installation it did not make, and
# whatever happens it stops what it started and purges what it installed.
#
#   bash deploy/check-packages.sh
#
# Environment: CARGO_TARGET_DIR (as in .ci/run); PW_PACKAGES_BUILD=1 to
# `cargo build` the binaries first (when not run after the test build);
# PW_PROFILE=release to check the packages `cargo deb` makes for a release;
# PW_STATIC=0 to skip the static (musl) build of deploy/check-static.sh, which
# costs a second build of the dependencies the first time on a machine;
# PW_LINTIAN=0 to skip lintian (about 25 s on the big dev-profile binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/portwatch-target}"
export CARGO_TERM_COLOR=never
# dev: the test build's binaries (CI). release: what `cargo deb` ships.
profile=${PW_PROFILE:-dev}
case "$profile" in dev) bin_dir="$CARGO_TARGET_DIR/debug" ;; *) bin_dir="$CARGO_TARGET_DIR/$profile" ;; esac
out="$CARGO_TARGET_DIR/debian"
# Written before dpkg -i, removed after the purge: a leftover marks an install
# of ours that an interrupted run did not clean up.
marker=/var/lib/portwatch-check-packages.installed
cargo_deb_version=3.8.0
pkgs=(portwatch-agent portwatch-collector)

t0=$SECONDS
step_t=$SECONDS
step() {
    echo "== check-packages: $* (at $((SECONDS - t0))s, previous step $((SECONDS - step_t))s)"
    step_t=$SECONDS
}
fail() {
    echo "check-packages: FAIL: $*" >&2
    exit 1
}
# expect WHAT GOT WANT
expect() {
    if [ "$2" != "$3" ]; then
        fail "$1: got '$2', want '$3'"
    fi
    echo "   ok: $1: $3"
}

[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i)"

installed() {
    local s
    s=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
    [ -n "$s" ] && [ "$s" != not-installed ]
}

pids=()
cleanup() {
    local rc=$?
    set +e
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if [ -e "$marker" ]; then
        dpkg --purge "${pkgs[@]}" >/dev/null 2>&1
        rm -f "$marker"
    fi
    if [ -n "${work:-}" ]; then rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT

step "preconditions"
for p in "${pkgs[@]}"; do
    if installed "$p"; then
        if [ -e "$marker" ]; then
            echo "   an interrupted run left $p installed: purging it"
            dpkg --purge "${pkgs[@]}" >/dev/null
            rm -f "$marker"
        else
            fail "$p is installed on this machine and not by this script: not touching it"
        fi
    fi
done
if [ -e /var/lib/portwatch-agent ] || [ -e /var/lib/portwatch-collector ] || [ -e /etc/portwatch ]; then
    fail "/var/lib/portwatch-* or /etc/portwatch exist without the packages: not touching them"
fi
work=$(mktemp -d /tmp/check-packages.XXXXXX)

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "   installing systemd for systemd-analyze (nothing is started)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    echo "   installing cargo-deb $cargo_deb_version (about 1-2 min, once per machine)"
    cargo install cargo-deb --version "$cargo_deb_version" --locked --quiet
fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || fail "no workspace version in Cargo.toml"

step "binaries ($profile profile)"
if [ "${PW_PACKAGES_BUILD:-}" = 1 ] || [ ! -x "$bin_dir/portwatch-agent" ] || [ ! -x "$bin_dir/portwatch-collector" ]; then
    cargo build --locked --profile "$profile" -p portwatch-agent -p portwatch-collector --bins
fi
for p in "${pkgs[@]}"; do
    expect "$bin_dir/$p --version" "$("$bin_dir/$p" --version)" "$p $version"
done

step "cargo deb (both packages)"
rm -rf "$out"
for p in "${pkgs[@]}"; do
    # cargo-deb warns that the dev profile is for testing only: that is what
    # this is. The release packages: `cargo deb -p $p` (deploy/README.md).
    cargo deb -p "$p" --profile "$profile" --no-build --fast --output "$out/" 2>&1 |
        grep -v -e 'dev profile is not supported' -e 'To enable debug symbols set' || true
done
agent_deb=$(ls "$out"/portwatch-agent_"$version"-*_*.deb)
collector_deb=$(ls "$out"/portwatch-collector_"$version"-*_*.deb)
ls -l "$agent_deb" "$collector_deb"
for deb in "$agent_deb" "$collector_deb"; do
    dpkg-deb --info "$deb" control | sed -n 's/^/   /; /Depends:/p'
done

step "lintian (Debian policy)"
expect "deploy/debian/changelog's first entry" "$(sed -n '1s/^portwatch (\(.*\)).*/\1/p' deploy/debian/changelog)" "$version-1"
if [ "${PW_LINTIAN:-1}" != 0 ]; then
    if ! command -v lintian >/dev/null 2>&1; then
        echo "   installing lintian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends lintian >/dev/null
    fi
    # Errors and warnings fail; info tags are shown. Not an upload to Debian,
    # so there is no ITP bug for the changelog to close. Lintian remarks that it
    # runs as root; that line is dropped.
    lint_rc=0
    lint_out=$(lintian --fail-on error,warning -I --tag-display-limit 0 \
        --suppress-tags initial-upload-closes-no-bugs "$agent_deb" "$collector_deb" 2>&1) ||
        lint_rc=$?
    grep -v 'running with root privileges is not recommended' <<<"$lint_out" || true
    [ "$lint_rc" = 0 ] || fail "lintian found problems (above)"
    echo "   ok: lintian: no errors or warnings"
fi

step "dpkg -i"
touch "$marker"
dpkg -i "$agent_deb" "$collector_deb"

step "installed files, users, dirs, modes"
for p in "${pkgs[@]}"; do
    expect "/usr/bin/$p --version" "$("/usr/bin/$p" --version)" "$p $version"
    IFS=: read -r _ _ uid gid _ home shell < <(getent passwd "$p") || fail "no user $p"
    [ "$uid" -lt 1000 ] || fail "$p: uid $uid is not a system uid"
    expect "$p home, shell" "$home $shell" "/var/lib/$p /usr/sbin/nologin"
    expect "$p primary group" "$(getent group "$gid" | cut -d: -f1)" "$p"
    case "$(getent shadow "$p" | cut -d: -f2)" in
    '!'* | '*'*) echo "   ok: $p has no usable password" ;;
    *) fail "$p has a usable password" ;;
    esac
    expect "/var/lib/$p" "$(stat -c '%U:%G %a' "/var/lib/$p")" "$p:$p 700"
    expect "$p.service installed" "$(stat -c '%U:%G %a' "/lib/systemd/system/$p.service")" "root:root 644"
    for page in "$p" "$p-$([ "$p" = portwatch-agent ] && echo run || echo serve)"; do
        zgrep -q 'EXTRA\|OPTIONS' "/usr/share/man/man1/$page.1.gz" || fail "man page $page missing"
    done
done
expect "/etc/portwatch" "$(stat -c '%U:%G %a' /etc/portwatch)" "root:root 755"
expect "agent.toml" "$(stat -c '%U:%G %a' /etc/portwatch/agent.toml)" "root:root 644"
expect "collector.toml" "$(stat -c '%U:%G %a' /etc/portwatch/collector.toml)" "root:portwatch-collector 640"
expect "collector.toml statoverride" "$(dpkg-statoverride --list /etc/portwatch/collector.toml)" \
    "root portwatch-collector 640 /etc/portwatch/collector.toml"
expect "agent conffiles" "$(dpkg-query -W -f='${Conffiles}' portwatch-agent | awk '{print $1}')" \
    /etc/portwatch/agent.toml
expect "collector conffiles" "$(dpkg-query -W -f='${Conffiles}' portwatch-collector | awk '{print $1}')" \
    /etc/portwatch/collector.toml

step "nothing started or enabled by the install"
running() {
    local exe
    for exe in /proc/[0-9]*/exe; do
        [ "$(readlink "$exe" 2>/dev/null)" = "$1" ] && return 0
    done
    return 1
}
for p in "${pkgs[@]}"; do
    ! running "/usr/bin/$p" || fail "$p is running after dpkg -i"
    [ ! -e "/etc/systemd/system/multi-user.target.wants/$p.service" ] || fail "$p.service was enabled by the install"
    echo "   ok: $p not running, not enabled"
done
[ ! -e /var/lib/portwatch-agent/agent.key ] || fail "agent.key before enrollment"
echo "   ok: the agent unit's ConditionPathExists=/var/lib/portwatch-agent/agent.key is false: no start before enroll"

step "systemd-analyze verify and security (installed units)"
for p in "${pkgs[@]}"; do
    unit=/lib/systemd/system/$p.service
    if ! verify=$(systemd-analyze verify "$unit" 2>&1) || [ -n "$verify" ]; then
        fail "systemd-analyze verify $unit: $verify"
    fi
    echo "   ok: systemd-analyze verify $p.service: clean"
    # 0-100 scale: 20 is the 2.0 "OK" band; the units score about 1.1.
    score=$(systemd-analyze security --offline=true --threshold=20 "$unit" 2>&1 | tail -1) ||
        fail "systemd-analyze security $unit: $score"
    echo "   ok: $score"
done

step "the bastion path with the installed binaries (loopback, as the service users)"
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
agent_port=$(free_port)
http_port=$(free_port)
# The unit's command line, user and umask; only the listen addresses differ.
# setpriv execs (runuser would stay as a parent that SIGKILLs 2 s after a
# SIGTERM), so $! is the service itself, as systemd's MAINPID.
as_service() { # USER COMMAND...
    local user=$1
    shift
    umask 0077
    exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
}
(as_service portwatch-collector env PORTWATCH_DATA_DIR=/var/lib/portwatch-collector \
    /usr/bin/portwatch-collector serve --config /etc/portwatch/collector.toml \
    --agent-addr "127.0.0.1:$agent_port" --http-addr "127.0.0.1:$http_port") \
    >"$work/collector.log" 2>&1 &
collector_pid=$!
pids+=("$collector_pid")
for _ in $(seq 100); do
    [ -e /var/lib/portwatch-collector/collector.json ] && break
    kill -0 "$collector_pid" 2>/dev/null || fail "collector exited: $(cat "$work/collector.log")"
    sleep 0.2
done
[ -e /var/lib/portwatch-collector/collector.json ] || fail "collector never came up: $(cat "$work/collector.log")"
expect "collector CA key" "$(stat -c '%U %a' /var/lib/portwatch-collector/ca.key)" "portwatch-collector 600"
join=$(/usr/bin/portwatch-collector token create --name check-packages --ttl 10m | tail -n 1)
case "$join" in pwjoin1:*) ;; *) fail "token create printed no join string: $join" ;; esac
# As the README says: root enrolls into the package's data dir.
enrolled=$(/usr/bin/portwatch-agent enroll "$join")
echo "   $enrolled"
case "$enrolled" in *"start it with: systemctl enable --now portwatch-agent") ;;
*) fail "enroll does not point at the packaged unit: $enrolled" ;; esac
for f in agent.key agent.pem ca.pem agent.json; do
    got=$(stat -c '%U:%G' "/var/lib/portwatch-agent/$f")
    expect "/var/lib/portwatch-agent/$f owner" "$got" "portwatch-agent:portwatch-agent"
done
expect "agent.key mode" "$(stat -c '%a' /var/lib/portwatch-agent/agent.key)" 600
out_again=$(PORTWATCH_JOIN="$join" /usr/bin/portwatch-agent enroll --if-not-enrolled)
case "$out_again" in "already enrolled as check-packages"*) echo "   ok: enroll --if-not-enrolled: $out_again" ;;
*) fail "enroll --if-not-enrolled: $out_again" ;; esac
(as_service portwatch-agent env PORTWATCH_AGENT_DATA_DIR=/var/lib/portwatch-agent \
    /usr/bin/portwatch-agent run --config /etc/portwatch/agent.toml) >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
connected=""
for _ in $(seq 100); do
    if /usr/bin/portwatch-collector agents --json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; sys.exit(0 if any(a["name"] == "check-packages" and a.get("connected_since_unix_ms") for a in json.load(sys.stdin)) else 1)'; then
        connected=1
        break
    fi
    kill -0 "$agent_pid" 2>/dev/null || fail "agent exited: $(cat "$work/agent.log")"
    sleep 0.2
done
[ -n "$connected" ] || fail "agent never connected: $(cat "$work/agent.log") $(cat "$work/collector.log")"
echo "   ok: the agent, run as portwatch-agent with the unit's command line, is connected"
stop_within() { # PID NAME SECONDS: SIGTERM, as systemd does, and a clean exit in time
    local t=$SECONDS rc=0
    kill -TERM "$1"
    timeout "$3" tail --pid="$1" -f /dev/null || fail "$2 still running ${3}s after SIGTERM"
    wait "$1" || rc=$?
    expect "$2 exit status after SIGTERM" "$rc" 0
    echo "   ok: $2 stopped in $((SECONDS - t))s (TimeoutStopSec=30s)"
}
stop_within "$agent_pid" agent 30
stop_within "$collector_pid" collector 30
pids=()

step "ICMP as the agent's user: why its unit grants CAP_NET_RAW"
icmp_check() { # SETPRIV-OPTIONS...: an ICMP check of 127.0.0.1 as portwatch-agent
    setpriv --reuid=portwatch-agent --regid=portwatch-agent --init-groups "$@" -- \
        /usr/bin/portwatch-agent check icmp://127.0.0.1
}
read -r ping_lo ping_hi </proc/sys/net/ipv4/ping_group_range
agent_gid=$(getent group portwatch-agent | cut -d: -f3)
if [ "$agent_gid" -ge "$ping_lo" ] && [ "$agent_gid" -le "$ping_hi" ]; then
    echo "   ping sockets are open to its group here ($ping_lo-$ping_hi): the capability goes unused"
else
    out=$(icmp_check) && fail "ICMP without CAP_NET_RAW worked: $out"
    case "$out" in *CAP_NET_RAW*) echo "   ok: without it (ping_group_range $ping_lo $ping_hi): $out" ;;
    *) fail "ICMP without CAP_NET_RAW: $out" ;; esac
fi
out=$(icmp_check --inh-caps=+net_raw --ambient-caps=+net_raw) || fail "ICMP with CAP_NET_RAW: $out"
echo "   ok: with the unit's AmbientCapabilities=CAP_NET_RAW: $out"

step "reinstall over itself: enrollment and local config edits survive"
echo "# edited by check-packages" >>/etc/portwatch/agent.toml
dpkg -i "$agent_deb" "$collector_deb" >/dev/null
expect "agent.toml keeps the edit" "$(tail -n 1 /etc/portwatch/agent.toml)" "# edited by check-packages"
expect "agent.key kept" "$(stat -c '%U %a' /var/lib/portwatch-agent/agent.key)" "portwatch-agent 600"
expect "collector.toml after reinstall" "$(stat -c '%U:%G %a' /etc/portwatch/collector.toml)" "root:portwatch-collector 640"

if [ -x deploy/k8s/validate.sh ]; then
    step "Kubernetes manifests"
    bash deploy/k8s/validate.sh
fi

step "dpkg --purge"
dpkg --purge "${pkgs[@]}"
rm -f "$marker"
for p in "${pkgs[@]}"; do
    ! getent passwd "$p" >/dev/null || fail "user $p left after purge"
    ! getent group "$p" >/dev/null || fail "group $p left after purge"
    for path in "/usr/bin/$p" "/var/lib/$p" "/lib/systemd/system/$p.service" \
        "/var/lib/systemd/deb-systemd-helper-enabled/$p.service.dsh-also" \
        "/var/lib/systemd/deb-systemd-helper-masked/$p.service"; do
        [ ! -e "$path" ] || fail "$path left after purge"
    done
done
[ ! -e /etc/portwatch ] || fail "/etc/portwatch left after purge: $(ls -la /etc/portwatch)"
[ -z "$(dpkg-statoverride --list /etc/portwatch/collector.toml)" ] || fail "statoverride left after purge"
echo "   ok: users, groups, state, config, units, statoverride: all gone"

if [ "${PW_STATIC:-1}" != 0 ]; then
    step "static (musl) binaries, as the container images build them"
    bash deploy/check-static.sh
fi

step "done: packages checked in $((SECONDS - t0))s"
