#!/bin/sh
# Builds the server, then runs it under handover (zero-downtime reloads).
#   HANDOVER  path of the handover binary (default: handover from PATH)
#   PORT      TCP port to serve on 127.0.0.1 (default 8080; HOST changes the address)
#   CONTROL   handover's control socket (default: handover's own default)
#   PROFILE   cargo profile to build (default release)
# Reload: `handover reload --control "$CONTROL"` after `cargo build --release`
set -eu
cd "$(dirname "$0")"
profile="${PROFILE:-release}"
cargo build --quiet --profile "$profile" --bin handover-recipe-axum
dir="$profile"; [ "$profile" = dev ] && dir=debug
target="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
set -- --bind "http=tcp://${HOST:-127.0.0.1}:${PORT:-8080}"
if [ -n "${CONTROL:-}" ]; then set -- "$@" --control "$CONTROL"; fi
exec "${HANDOVER:-handover}" run "$@" --stop-timeout 30s -- "$target/$dir/handover-recipe-axum"
