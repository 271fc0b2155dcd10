# Shared by the interop scripts (source it, do not run it): starts a real rbee-hive and real
# worker processes in a temporary directory, and on exit stops every process it started and
# removes the directory.
#
# Needs the workspace binaries: `cargo build --workspace --bins` (or set RBEE_BIN_DIR to the
# folder that contains rbee-hive and test-worker).

INTEROP_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
INTEROP_BIN_DIR="${RBEE_BIN_DIR:-$INTEROP_REPO_ROOT/target/debug}"

# The interpreter itself rather than a version-manager shim, which costs tens of milliseconds
# per start and the checks start Python many times.
PYTHON="$(python3 -c 'import sys; print(sys.executable)')"

# Seconds to wait for a started process to print its `listening on` line.
INTEROP_START_TIMEOUT_SECS=15

INTEROP_WORK_DIR=""
CATALOG_DIR=""
STATE_DIR=""
MODEL_DIR=""
HIVE_PID=""
HIVE_ADDR=""
HIVE_LOG=""

# Processes to SIGKILL on exit. Worker pids come first: each one is either still running or a
# zombie kept by its parent process from this list, so the pid cannot have been reused by the
# time the cleanup signals it.
interop_worker_pids=()
interop_child_pids=()

# Prints a failure message and exits, which runs the cleanup.
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Prints a progress line, so a failure shows the step that was running.
step() {
    echo "--- [${SECONDS}s] $*"
}

# Returns success while the process exists and has not exited (a zombie counts as exited).
process_running() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # The state follows the command name, which is in parentheses and may contain spaces.
    local state="${stat##*) }"
    state="${state%% *}"
    [[ "$state" != "Z" && "$state" != "X" ]]
}

# Waits until FILE has a line matching the extended regex PATTERN and sets MATCHED_LINE to
# the first such line. PID is the process that writes FILE, and WHAT names it for messages.
wait_for_line() {
    local file="$1" pattern="$2" pid="$3" what="$4"
    local deadline=$((SECONDS + INTEROP_START_TIMEOUT_SECS))
    while ((SECONDS < deadline)); do
        MATCHED_LINE="$(grep -E -m1 "$pattern" "$file" 2>/dev/null || true)"
        if [[ -n "$MATCHED_LINE" ]]; then
            return 0
        fi
        if ! process_running "$pid"; then
            fail "$what exited before it printed a line matching '$pattern';" \
                "its output: $(cat "$file" 2>/dev/null)"
        fi
        sleep 0.02
    done
    fail "$what did not print a line matching '$pattern' within ${INTEROP_START_TIMEOUT_SECS}s;" \
        "its output: $(cat "$file" 2>/dev/null)"
}

interop_cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${interop_worker_pids[@]}" "${interop_child_pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${interop_child_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$HIVE_PID" ]]; then
        kill -TERM "$HIVE_PID" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while process_running "$HIVE_PID" && ((SECONDS < deadline)); do
            sleep 0.05
        done
        if process_running "$HIVE_PID"; then
            echo "rbee-hive (pid $HIVE_PID) still running 10s after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$HIVE_PID" 2>/dev/null || true
        fi
        wait "$HIVE_PID" 2>/dev/null || true
    fi
    if ((status != 0)) && [[ -s "$HIVE_LOG" ]]; then
        echo "--- last lines of the rbee-hive log:" >&2
        tail -n 40 "$HIVE_LOG" >&2
    fi
    if [[ -n "$INTEROP_WORK_DIR" ]]; then
        rm -rf "$INTEROP_WORK_DIR"
    fi
    exit "$status"
}

# Creates the temporary directories and installs the cleanup trap. Call it first.
interop_setup() {
    local binary
    for binary in rbee-hive test-worker; do
        if [[ ! -x "$INTEROP_BIN_DIR/$binary" ]]; then
            fail "$INTEROP_BIN_DIR/$binary is missing; run 'cargo build --workspace --bins' first"
        fi
    done
    INTEROP_WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rbee-interop.XXXXXX")"
    trap interop_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    CATALOG_DIR="$INTEROP_WORK_DIR/catalog"
    STATE_DIR="$INTEROP_WORK_DIR/state"
    MODEL_DIR="$INTEROP_WORK_DIR/models"
    HIVE_LOG="$INTEROP_WORK_DIR/hive.log"
    mkdir -p "$CATALOG_DIR" "$STATE_DIR" "$MODEL_DIR"
}

# Copies the test-worker binary into the catalog as NAME.
add_worker_binary() {
    cp "$INTEROP_BIN_DIR/test-worker" "$CATALOG_DIR/$1"
    chmod 0755 "$CATALOG_DIR/$1"
}

# Adds the test-worker binary as the folder entry NAME with a manifest recording VERSION, whose
# argument template fits test-worker (it takes only --port), so SpawnWorker can start it.
add_spawnable_worker_binary() {
    local name="$1" version="$2"
    mkdir -p "$CATALOG_DIR/$name"
    cp "$INTEROP_BIN_DIR/test-worker" "$CATALOG_DIR/$name/$name"
    chmod 0755 "$CATALOG_DIR/$name/$name"
    printf '{"version": "%s", "args": ["--port", "{port}"]}\n' "$version" \
        >"$CATALOG_DIR/$name/manifest.json"
}

# Starts rbee-hive on 127.0.0.1 with a free port and the display name NAME. Sets HIVE_PID and
# HIVE_ADDR (host:port). Workers the hive spawns stop when it shuts down instead of outliving
# the script.
start_hive() {
    local name="$1"
    local stdout="$INTEROP_WORK_DIR/hive.out"
    "$INTEROP_BIN_DIR/rbee-hive" --listen 127.0.0.1:0 --name "$name" \
        --catalog-dir "$CATALOG_DIR" --state-dir "$STATE_DIR" --model-dir "$MODEL_DIR" \
        --stop-workers-on-shutdown --drain-timeout-secs 2 \
        >"$stdout" 2>"$HIVE_LOG" </dev/null &
    HIVE_PID=$!
    wait_for_line "$stdout" '^listening on ' "$HIVE_PID" "rbee-hive"
    HIVE_ADDR="${MATCHED_LINE#listening on }"
    [[ "$HIVE_ADDR" == 127.0.0.1:* ]] || fail "unexpected first line of rbee-hive: '$MATCHED_LINE'"
}

# Starts the catalog binary NAME with ARGS as a worker process and waits until it listens.
# Sets WORKER_PID, WORKER_PORT and WORKER_PARENT_PID.
#
# The worker's parent is a `sleep` that never calls wait(), so a worker that exits stays a
# zombie and the hive can read its exit status. Under a shell, the shell would reap it at once
# and the hive would report the exit code only when it happened to be faster.
start_worker() {
    local name="$1"
    shift
    local index=$((${#interop_worker_pids[@]} + 1))
    local stdout="$INTEROP_WORK_DIR/worker-$index.out"
    local pid_file="$INTEROP_WORK_DIR/worker-$index.pid"
    WORKER_STDOUT="$stdout" WORKER_PID_FILE="$pid_file" \
        sh -c '"$@" >"$WORKER_STDOUT" 2>&1 </dev/null &
               echo "$!" >"$WORKER_PID_FILE"
               exec sleep 600' \
        sh "$CATALOG_DIR/$name" "$@" &
    WORKER_PARENT_PID=$!
    interop_child_pids+=("$WORKER_PARENT_PID")

    local deadline=$((SECONDS + INTEROP_START_TIMEOUT_SECS))
    until [[ -s "$pid_file" ]]; do
        ((SECONDS < deadline)) || fail "worker $name did not start within ${INTEROP_START_TIMEOUT_SECS}s"
        sleep 0.02
    done
    WORKER_PID="$(cat "$pid_file")"
    interop_worker_pids+=("$WORKER_PID")

    wait_for_line "$stdout" '^listening on [0-9]+$' "$WORKER_PID" "worker $name (pid $WORKER_PID)"
    WORKER_PORT="${MATCHED_LINE#listening on }"
}

# Starts a process that is not a worker (a plain `sleep`). Sets BYSTANDER_PID.
start_bystander() {
    sleep 600 </dev/null &
    BYSTANDER_PID=$!
    interop_child_pids+=("$BYSTANDER_PID")
}
