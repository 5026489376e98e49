#!/bin/sh
# Runs the server under handover (zero-downtime reloads).
#   HANDOVER  path of the handover binary (default: handover from PATH)
#   PORT      TCP port to serve on 127.0.0.1 (default 8080; HOST changes the address)
#   CONTROL   handover's control socket (default: handover's own default)
# Reload (after changing server.js): `handover reload --control "$CONTROL"`
set -eu
cd "$(dirname "$0")"
[ -d node_modules/sd-notify ] || npm ci --no-audit --no-fund
set -- --bind "http=tcp://${HOST:-127.0.0.1}:${PORT:-8080}"
if [ -n "${CONTROL:-}" ]; then set -- "$@" --control "$CONTROL"; fi
exec "${HANDOVER:-handover}" run "$@" --stop-timeout 30s -- node server.js
