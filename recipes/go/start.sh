#!/bin/sh
# Builds the server, then runs it under handover (zero-downtime reloads).
#   HANDOVER  path of the handover binary (default: handover from PATH)
#   PORT      TCP port to serve on 127.0.0.1 (default 8080; HOST changes the address)
#   CONTROL   handover's control socket (default: handover's own default)
# Reload: `handover reload --control "$CONTROL"` after `go build -o server .`
set -eu
cd "$(dirname "$0")"
go build -o server .
set -- --bind "http=tcp://${HOST:-127.0.0.1}:${PORT:-8080}"
if [ -n "${CONTROL:-}" ]; then set -- "$@" --control "$CONTROL"; fi
exec "${HANDOVER:-handover}" run "$@" --stop-timeout 30s -- ./server
