#!/usr/bin/env bash
# Builds the container images' binaries without Docker: both programs for the
# musl target (what deploy/docker/Dockerfile builds, here in the dev profile to
# stay quick), and checks they are static and run: --version, a real TCP check
# by the static agent on loopback, the static collector checking the packaged
# config file. Installs the musl target (rustup) and musl-gcc (musl-tools) when
# missing.
#
#   bash deploy/check-static.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/portwatch-target}"
export CARGO_TERM_COLOR=never
target=x86_64-unknown-linux-musl
t0=$SECONDS
fail() {
    echo "check-static: FAIL: $*" >&2
    exit 1
}

if ! rustup target list --installed | grep -qx "$target"; then
    echo "   installing the $target standard library (rustup)"
    rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
    echo "   installing musl-tools (musl-gcc, for ring's C code)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi

echo "== check-static: cargo build --target $target (at $((SECONDS - t0))s)"
cargo build --locked --target "$target" -p portwatch-agent -p portwatch-collector --bins
dir="$CARGO_TARGET_DIR/$target/debug"

echo "== check-static: static and working (at $((SECONDS - t0))s)"
for p in portwatch-agent portwatch-collector; do
    kind=$(file -b "$dir/$p")
    case "$kind" in
    *"static-pie linked"* | *"statically linked"*) echo "   ok: $p: ${kind%%, BuildID*}" ;;
    *) fail "$p is not static: $kind" ;;
    esac
    [ "$("$dir/$p" --version)" = "$p $(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)" ] ||
        fail "$p --version: $("$dir/$p" --version)"
done
# A listener that accepts once, and the static agent's check of it.
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); s.settimeout(20); c,_=s.accept(); c.close()' "$port" &
listener=$!
sleep 0.3
out=$("$dir/portwatch-agent" check "tcp://127.0.0.1:$port") || fail "static agent check: $out"
wait "$listener" || true
echo "   ok: static agent: $out"
out=$("$dir/portwatch-collector" monitors check deploy/etc/collector.toml) || fail "static collector: $out"
echo "   ok: static collector: monitors check deploy/etc/collector.toml: ${out:-no problems}"
echo "== check-static: done in $((SECONDS - t0))s"
