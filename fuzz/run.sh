#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target in this directory for SECONDS each (default
# 30); exits non-zero if a target crashes (a panic, a leaked descriptor
# token, a sanitizer report). CI calls this.
#
# cargo-fuzz needs nightly-only compiler flags. Only stable Rust is available
# here, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them. AddressSanitizer
# is tried first; if it cannot build, the targets run without a sanitizer
# (-s none), which still catches panics and the targets' own assertions.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-30}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]  (a whole number of seconds per target)" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

sanitizer=address
if ! cargo fuzz build -s "$sanitizer" >/dev/null 2>build.log; then
  echo "== AddressSanitizer build failed (see fuzz/build.log); fuzzing without a sanitizer"
  sanitizer=none
  cargo fuzz build -s none
fi
rm -f build.log

status=0
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  echo "== fuzzing $target for ${secs}s (sanitizer: $sanitizer)"
  if ! cargo fuzz run -s "$sanitizer" "$target" "corpus/$target" "${seeds[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1; then
    echo "== $target CRASHED: reproduce with" \
      "RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer $target fuzz/artifacts/$target/<file>" >&2
    status=1
  fi
done
exit "$status"
