#!/usr/bin/env bash
# Minimizes each target's corpus (libFuzzer -merge=1: the smallest set of
# inputs with the same coverage) together with its seeds, and packs the
# result into tests/fuzz/corpus-min.tar.xz, the corpus kept in git: run.sh
# starts a target's campaign from it when there is no local corpus, and the
# normal test run replays every input in it (tests/tests/fuzz_inputs.rs).
# Run after a campaign, with the targets built by run.sh:
#
#   tests/fuzz/pack-corpus.sh
#
# Environment: as run.sh (PW_FUZZ_CORPUS, PW_FUZZ_TARGET_DIR).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
corpus_root="${PW_FUZZ_CORPUS:-$here/corpus}"
target_dir="${PW_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/libfuzzer}}"
target_dir="${target_dir:-$here/target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mapfile -t targets < <(cargo fuzz list --fuzz-dir "$here")
for t in "${targets[@]}"; do
  bin="$target_dir/$triple/release/$t"
  [ -x "$bin" ] || { echo "pack-corpus: $t is not built: run run.sh first" >&2; exit 2; }
  out="$work/corpus-min/$t"
  mkdir -p "$out" "$corpus_root/$t"
  # The same length bound as run.sh: config and STARTTLS sessions are longer.
  case "$t" in config | starttls) len=16384 ;; csr | proto) len=8192 ;; *) len=4097 ;; esac
  "$bin" -merge=1 -max_len="$len" "$out" "$corpus_root/$t" "$here/seeds/$t" >"$work/$t.log" 2>&1 || {
    tail -20 "$work/$t.log" >&2
    exit 1
  }
  printf '%-18s %6d inputs\n' "$t" "$(find "$out" -type f | wc -l)"
done
# Sorted names and fixed metadata: the same corpus packs to the same bytes.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf - corpus-min |
  xz -9 >"$here/corpus-min.tar.xz"
echo "== $(du -h "$here/corpus-min.tar.xz" | cut -f1) in tests/fuzz/corpus-min.tar.xz"
