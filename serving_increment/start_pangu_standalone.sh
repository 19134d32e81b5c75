#!/usr/bin/env bash
# Start the server in the background, as the reference's start_pangu_standalone.sh:
#   bash serving_increment/start_pangu_standalone.sh MODEL_OR_EXPORT_DIR [PORT]
# MODEL_OR_EXPORT_DIR is an export (export.py) or a model, which is exported into ./serving_increment first.
# Waits until GET /health answers, then prints the address. The process id goes to PID_FILE (env, default
# ./pangu_server.pid) and the log to LOG_FILE (env, default ./serving.log); stop it with stop_pangu.sh.
# Env: HOST (default 127.0.0.1), START_TIMEOUT seconds (default 900), PYTHON, and SERVE_ARGS (extra `pangu serve`
# arguments, e.g. "--slots 16 --tokenizer_path DIR").
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "Usage: bash $0 MODEL_OR_EXPORT_DIR [PORT]" >&2
    exit 1
fi
MODEL=$1
PORT=${2:-5000}
HOST=${HOST:-127.0.0.1}
PID_FILE=${PID_FILE:-$PWD/pangu_server.pid}
LOG_FILE=${LOG_FILE:-$PWD/serving.log}
START_TIMEOUT=${START_TIMEOUT:-900}
PYTHON=${PYTHON:-python}
[ -e "$MODEL" ] || { echo "$MODEL does not exist" >&2; exit 1; }
if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "a server is already running with pid $(cat "$PID_FILE") ($PID_FILE); stop it with stop_pangu.sh" >&2
    exit 1
fi
read -r -a EXTRA <<< "${SERVE_ARGS:-}"
nohup "$PYTHON" -m pangu_zoo.cli serve "$MODEL" --host "$HOST" --port "$PORT" --pid_file "$PID_FILE" \
    --export_dir "$PWD" "${EXTRA[@]}" > "$LOG_FILE" 2>&1 &
PID=$!
echo "$PID" > "$PID_FILE"
URL="http://$HOST:$PORT"
deadline=$((SECONDS + START_TIMEOUT))
until "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$URL/health" \
        2>/dev/null; do
    if ! kill -0 "$PID" 2>/dev/null; then
        rm -f "$PID_FILE"
        echo "the server exited during start-up; the end of $LOG_FILE:" >&2
        tail -n 20 "$LOG_FILE" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "the server did not answer $URL/health within $START_TIMEOUT s; see $LOG_FILE" >&2
        exit 1
    fi
    sleep 1
done
echo "server started (pid $PID): $URL/  (log: $LOG_FILE)"
