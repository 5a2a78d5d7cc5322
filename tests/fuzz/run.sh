#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 300, long
# enough for these targets to plateau), one after the other on one core,
# growing a corpus per target from the seeds in tests/fuzz/seeds/. Prints a
# line per target with libFuzzer's final figures and exits 1 if any target
# crashed (the input is kept under the artifacts dir; see README.md).
#
#   tests/fuzz/run.sh [SECONDS] [TARGET[:SECONDS]...]
#
# A target may carry its own time (proto:1200); all are built once, up front.
#
# Environment: PW_FUZZ_CORPUS (corpus root, default tests/fuzz/corpus, not in
# git; when missing, it starts from corpus-min.tar.xz, see pack-corpus.sh), PW_FUZZ_ARTIFACTS (default tests/fuzz/artifacts), PW_FUZZ_TARGET_DIR
# (build dir, default $CARGO_TARGET_DIR/libfuzzer or tests/fuzz/target),
# PW_FUZZ_SANITIZER (none, the default, builds on stable Rust; address needs
# nightly features, so it sets RUSTC_BOOTSTRAP=1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

seconds="${1:-300}"
shift || true
corpus_root="${PW_FUZZ_CORPUS:-$here/corpus}"
artifacts_root="${PW_FUZZ_ARTIFACTS:-$here/artifacts}"
target_dir="${PW_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/libfuzzer}}"
target_dir="${target_dir:-$here/target}"
sanitizer="${PW_FUZZ_SANITIZER:-none}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

command -v cargo-fuzz >/dev/null || {
  echo "run.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
}

started=$SECONDS
build=(cargo fuzz build --fuzz-dir "$here" --target-dir "$target_dir" -s "$sanitizer")
if [ "$sanitizer" != none ]; then
  # Sanitizers are an unstable rustc flag; this opts the stable compiler in.
  export RUSTC_BOOTSTRAP=1
fi
echo "== build (${build[*]})"
"${build[@]}"
built=$((SECONDS - started))

# No local corpus yet (a new machine): start from the minimized corpus in git.
if [ ! -d "$corpus_root" ] && [ -f "$here/corpus-min.tar.xz" ]; then
  mkdir -p "$corpus_root"
  tar -xJf "$here/corpus-min.tar.xz" -C "$corpus_root" --strip-components=1
  echo "== corpus: started from tests/fuzz/corpus-min.tar.xz"
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir "$here")
fi

# The largest input worth trying: a reply the agent reads at most 4096 bytes
# of (plus the read-size byte); config files and STARTTLS sessions are longer.
max_len() {
  case "$1" in
    config | starttls) echo 16384 ;;
    csr | proto) echo 8192 ;;
    *) echo 4097 ;;
  esac
}

# libFuzzer's status lines carry no time: a sampler beside each run writes
# "seconds cov ft" every 10 s to coverage.tsv, and the table shows what the
# last third of the run added (+0/+0: the target reached its plateau).
sample() {
  local log="$1" out="$2" t0=$SECONDS line
  : >"$out"
  while sleep 10; do
    line=$(grep -aE '^#[0-9]+.* cov: ' "$log" | tail -1 || true)
    [ -n "$line" ] && printf '%s %s %s\n' $((SECONDS - t0)) \
      "$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")" \
      "$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$line")" >>"$out"
  done
}

# cov and ft at two thirds of the run, from coverage.tsv.
at_two_thirds() {
  awk -v t=$(($2 * 2 / 3)) '$1 <= t { c = $2; f = $3 } END { print (c == "" ? "? ?" : c " " f) }' "$1"
}

printf '%-18s %8s %10s %8s %7s %7s %12s %8s\n' target seconds execs exec/s cov ft 'last 1/3' crashes
crashed=0
for spec in "${targets[@]}"; do
  t="${spec%%:*}"
  secs="$seconds"
  [ "$spec" != "$t" ] && secs="${spec#*:}"
  corpus="$corpus_root/$t"
  artifacts="$artifacts_root/$t"
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [ -d "$here/seeds/$t" ] && seeds=("$here/seeds/$t")
  log="$artifacts/last-run.log"
  before=$(find "$artifacts" -maxdepth 1 -type f ! -name '*.log' ! -name '*.tsv' | wc -l)
  t0=$SECONDS
  rc=0
  sample "$log" "$artifacts/coverage.tsv" &
  sampler=$!
  # -jobs is not used: one process, one core. -timeout catches a hang on one
  # input; -rss_limit_mb a memory blow-up.
  "$target_dir/$triple/release/$t" "$corpus" "${seeds[@]}" \
    -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
  took=$((SECONDS - t0))
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  after=$(find "$artifacts" -maxdepth 1 -type f ! -name '*.log' ! -name '*.tsv' | wc -l)
  found=$((after - before))
  if [ "$rc" -ne 0 ] && [ "$found" -eq 0 ]; then found="rc=$rc"; fi
  [ "$found" != 0 ] && crashed=1
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | grep -E ' cov: ' | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  read -r cov23 ft23 < <(at_two_thirds "$artifacts/coverage.tsv" "$took")
  gain='?'
  if [ "$cov23" != '?' ] && [ -n "$cov" ]; then gain="+$((cov - cov23))/+$((ft - ft23))"; fi
  printf '%-18s %8s %10s %8s %7s %7s %12s %8s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$gain" "$found"
  if [ "$found" != 0 ]; then
    grep -E 'panicked at|^==[0-9]+==ERROR|Test unit written to' "$log" | head -5 | sed 's/^/    /'
  fi
done
echo "== ${#targets[@]} targets: $((SECONDS - started))s in all (build ${built}s)"
exit "$crashed"
