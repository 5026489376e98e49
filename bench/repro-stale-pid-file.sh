#!/usr/bin/env bash
# Regression check for a bug seen while benchmarking (BENCHMARKS.md,
# "Findings"), fixed on main by 925a4e7 ("Upgrader::signals() installs
# handlers before ready(); a failed upgrade restores the pid file"). Before
# that commit:
#
# upgrade_http (handover's `Upgrader`) writes its pid file in `ready()`,
# before it has told its parent it is ready and before `run()` installs the
# SIGHUP handler. A SIGHUP sent as soon as the pid file names the new process
# (a deploy script that upgrades twice in a row, or a watcher that reacts to
# the pid file) kills it with SIGHUP's default action. The parent rolls back
# correctly (it keeps serving, nothing is refused), but it does not restore
# the pid file: the pid file names a dead process from then on, so the next
# `kill -HUP $(cat pidfile)` or `kill -TERM $(cat pidfile)` reaches nobody.
#
#   cargo build --release -p handover --example upgrade_http
#   bench/repro-stale-pid-file.sh [path/to/upgrade_http]
#
# Exits 1 when reproduced (before the fix: within the first few attempts),
# 0 when not.
set -u
bin=${1:-target/release/examples/upgrade_http}
port=${PORT:-18190}
dir=$(mktemp -d)
pidf=$dir/upgrade_http.pid

RUST_LOG=warn "$bin" --listen "127.0.0.1:$port" --pid-file "$pidf" 2>"$dir/stderr" &
until [[ -s $pidf ]] && curl -sf "127.0.0.1:$port/" >/dev/null; do sleep 0.05; done

cleanup() {
    # The server that really serves, whatever the pid file says.
    local serving
    serving=$(curl -s "127.0.0.1:$port/" | sed -n 's/^pid=//p')
    [[ -n $serving ]] && kill -TERM "$serving"
    wait # reaps the first process, our child
    rm -rf "$dir"
}

for attempt in $(seq 1 20); do
    read -r old <"$pidf"
    kill -HUP "$old"
    new=$old
    # Busy-wait with builtins only (no fork) for the pid file to change.
    while [[ $new == "$old" ]]; do read -r new <"$pidf" 2>/dev/null || new=$old; done
    kill -HUP "$new" # upgrade again as soon as the new process is announced
    sleep 0.5
    read -r named <"$pidf"
    if ! kill -0 "$named" 2>/dev/null; then
        echo "reproduced on attempt $attempt:"
        echo "  the pid file names $named, which does not exist;"
        echo "  the server still answers: $(curl -s "127.0.0.1:$port/")"
        echo "  its log: $(grep -m1 'upgrade failed' "$dir/stderr" | sed 's/.*error=//')"
        cleanup
        exit 1
    fi
done
echo "not reproduced in 20 attempts"
cleanup
exit 0
