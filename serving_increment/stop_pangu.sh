#!/usr/bin/env bash
# Stop the server that start_pangu_standalone.sh started: the process named in PID_FILE (env, default
# ./pangu_server.pid) and no other. SIGTERM first; SIGKILL if it is still there after STOP_TIMEOUT seconds
# (env, default 30).
set -euo pipefail
PID_FILE=${PID_FILE:-$PWD/pangu_server.pid}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
if [ ! -f "$PID_FILE" ]; then
    echo "no server to stop ($PID_FILE does not exist)"
    exit 0
fi
PID=$(cat "$PID_FILE")
if ! [[ "$PID" =~ ^[0-9]+$ ]]; then
    echo "$PID_FILE does not hold a process id" >&2
    exit 1
fi
if ! kill -0 "$PID" 2>/dev/null; then
    echo "server $PID is not running; removing $PID_FILE"
    rm -f "$PID_FILE"
    exit 0
fi
kill -TERM "$PID"
deadline=$((SECONDS + STOP_TIMEOUT))
while kill -0 "$PID" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "server $PID did not stop within $STOP_TIMEOUT s; sending SIGKILL"
        kill -KILL "$PID" 2>/dev/null || true
        break
    fi
    sleep 0.5
done
rm -f "$PID_FILE"
echo "server $PID stopped"
