#!/usr/bin/env bash
# Check that grpcurl, with server reflection only (no .proto file), can use every RPC of a real
# rbee-hive. The script starts a hive and test-worker processes and calls each RPC, including its
# error cases. It compares the JSON responses with what it set up.
#
# Usage: scripts/interop/grpcurl.sh
# Needs `cargo build --workspace --bins` and scripts/install-grpcurl (or GRPCURL=/path/to/grpcurl).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GRPCURL="${GRPCURL:-$INTEROP_REPO_ROOT/.tools/bin/grpcurl}"
[[ -x "$GRPCURL" ]] || fail "grpcurl not found at $GRPCURL; run scripts/install-grpcurl first"

SERVICE="rbee.hive.v1.HiveService"

interop_setup
RESPONSE="$INTEROP_WORK_DIR/response.json"
ERRORS="$INTEROP_WORK_DIR/grpcurl.err"

# Runs a reflection verb of grpcurl (`list`, `describe SYMBOL`) and stores its output in
# $RESPONSE.
reflect() {
    if ! "$GRPCURL" -plaintext -max-time 30 "$HIVE_ADDR" "$@" >"$RESPONSE" 2>"$ERRORS"; then
        fail "grpcurl $* failed: $(cat "$ERRORS")"
    fi
}

# Calls the fully qualified METHOD with the JSON request BODY and stores the response in
# $RESPONSE. -emit-defaults prints zero values too, so a missing field is a real difference.
call_method() {
    local method="$1" body="$2"
    if ! "$GRPCURL" -plaintext -max-time 30 -emit-defaults -d "$body" \
        "$HIVE_ADDR" "$method" >"$RESPONSE" 2>"$ERRORS"; then
        fail "$method $body failed: $(cat "$ERRORS")"
    fi
}

# Calls METHOD of HiveService with the JSON request BODY.
call() {
    call_method "$SERVICE/$1" "$2"
}

# Calls METHOD with BODY and expects it to fail with the gRPC code CODE (grpcurl's spelling, for
# example NotFound), with JOB_ID in the `rbee-job-id` trailer. An empty JOB_ID expects an id the
# hive generated, and `none` expects no trailer. Sets ERROR_MESSAGE to the status message.
call_expecting_error() {
    local method="$1" body="$2" code="$3" job_id="$4"
    if "$GRPCURL" -plaintext -max-time 30 -v -d "$body" \
        "$HIVE_ADDR" "$SERVICE/$method" >"$RESPONSE" 2>"$ERRORS"; then
        fail "$method $body succeeded, expected code $code; output: $(cat "$RESPONSE")"
    fi
    ERROR_MESSAGE="$("$PYTHON" - "$RESPONSE" "$ERRORS" "$method $body" "$code" "$job_id" <<'PY'
import re, sys

stdout_path, stderr_path, call, expected_code, expected_job_id = sys.argv[1:]
stdout = open(stdout_path).read()
stderr = open(stderr_path).read()

# grpcurl prints the status as "ERROR:\n  Code: NotFound\n  Message: ..." on stderr.
fields = dict(
    line.strip().split(": ", 1)
    for line in stderr.splitlines()
    if line.startswith("  ") and ": " in line
)
if fields.get("Code") != expected_code:
    sys.exit(f"FAIL: {call}: expected code {expected_code}, got {fields.get('Code')!r}; "
             f"stderr: {stderr}")

# With -v, grpcurl lists the trailers on stdout after "Response trailers received:".
trailers = {}
section = stdout.split("Response trailers received:\n", 1)
if len(section) == 2:
    for line in section[1].splitlines():
        if not line.strip() or ": " not in line:
            break
        key, value = line.split(": ", 1)
        trailers[key] = value
job_id = trailers.get("rbee-job-id")
if expected_job_id == "none":
    if job_id is not None:
        sys.exit(f"FAIL: {call}: unexpected rbee-job-id trailer {job_id!r}")
elif expected_job_id:
    if job_id != expected_job_id:
        sys.exit(f"FAIL: {call}: rbee-job-id trailer is {job_id!r}, expected {expected_job_id!r}")
elif job_id is None or not re.fullmatch(r"job-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", job_id):
    sys.exit(f"FAIL: {call}: rbee-job-id trailer is {job_id!r}, expected a generated job-<uuid>")
print(fields.get("Message", ""))
PY
    )" || exit 1
}

# Evaluates the Python EXPRESSION on the response in $RESPONSE and compares the result with
# EXPECTED, a JSON value. In EXPRESSION, `r` is the response, or the list of messages of a
# stream when MODE is `stream`, and the module `re` is available.
check_response() {
    local mode="$1" label="$2" expression="$3" expected="$4"
    "$PYTHON" - "$RESPONSE" "$mode" "$label" "$expression" "$expected" <<'PY' || exit 1
import json, re, sys

path, mode, label, expression, expected_text = sys.argv[1:]
text = open(path).read()

# grpcurl prints one JSON document per message, one after another.
decoder = json.JSONDecoder()
messages = []
index = 0
while True:
    while index < len(text) and text[index].isspace():
        index += 1
    if index == len(text):
        break
    message, index = decoder.raw_decode(text, index)
    messages.append(message)

if mode == "stream":
    r = messages
elif len(messages) == 1:
    r = messages[0]
else:
    sys.exit(f"FAIL: {label}: expected one response message, got {len(messages)}: {text}")

try:
    # Globals, not locals, so that comprehensions in the expression see `r` too.
    actual = eval(expression, {"r": r, "re": re})
except Exception as error:
    sys.exit(f"FAIL: {label}: cannot evaluate {expression} ({error!r}) on the response: {text}")
expected = json.loads(expected_text)
if actual != expected:
    sys.exit(f"FAIL: {label}: {expression} is {json.dumps(actual)}, "
             f"expected {json.dumps(expected)}; response: {text}")
PY
}

check() { check_response single "$@"; }
check_stream() { check_response stream "$@"; }

# Compares the text in $RESPONSE, as printed by `grpcurl list` or `grpcurl describe`, with
# EXPECTED, a JSON list. KIND selects what is compared: `lines` (sorted), `methods` (the sorted
# method names of a service) or `fields` (the `name = number` pairs of a message, in order).
check_described() {
    local label="$1" kind="$2" expected="$3"
    "$PYTHON" - "$RESPONSE" "$label" "$kind" "$expected" <<'PY' || exit 1
import json, re, sys

path, label, kind, expected_text = sys.argv[1:]
text = open(path).read()
if kind == "lines":
    actual = sorted(text.split())
elif kind == "methods":
    actual = sorted(re.findall(r"^\s*rpc (\w+) \(", text, re.MULTILINE))
else:
    # Field lines read "[repeated|optional] TYPE NAME = NUMBER;".
    actual = [
        [name, int(number)]
        for name, number in re.findall(r"^\s*(?:\w+ )?[\w.]+ (\w+) = (\d+);$", text, re.MULTILINE)
    ]
expected = json.loads(expected_text)
if actual != expected:
    sys.exit(f"FAIL: {label}: found {json.dumps(actual)}, expected {json.dumps(expected)}; "
             f"output: {text}")
PY
}

# --- The machine the checks describe: three catalog entries (one of them a folder entry that
# SpawnWorker can start), three worker processes of llm-worker, and one process that is not a
# worker.
add_worker_binary llm-worker
add_worker_binary spare-worker
add_spawnable_worker_binary spawnable-worker 1.0.0
start_hive grpcurl-interop

start_worker llm-worker --exit-code 3
exiting_pid="$WORKER_PID" exiting_port="$WORKER_PORT" exiting_parent="$WORKER_PARENT_PID"
start_worker llm-worker --ignore-sigterm
stubborn_pid="$WORKER_PID" stubborn_port="$WORKER_PORT"
start_worker llm-worker
plain_pid="$WORKER_PID"
start_bystander
sorted_worker_pids="$(printf '%s\n' "$exiting_pid" "$stubborn_pid" "$plain_pid" | sort -n | paste -sd,)"

step "reflection: list and describe"
reflect list
# grpcurl 1.8.6 queries the v1alpha reflection service, which lists itself but not the v1 one.
check_described "services listed by reflection" lines \
    '["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "rbee.hive.v1.HiveService"]'
reflect describe "$SERVICE"
# A method added to the service fails this check until this script calls it too.
check_described "methods of $SERVICE" methods \
    '["BuildWorker", "CancelJob", "DeleteModel", "DeleteWorkerBinary", "DeleteWorkerProcess",
      "DownloadModel", "DownloadWorker", "GetActiveWorker", "GetHiveInfo", "GetModel",
      "GetWorkerBinary", "GetWorkerProcess", "Heartbeat", "Infer", "ListActiveWorkers",
      "ListModels", "ListWorkerBinaries", "ListWorkerProcesses", "Narrate",
      "RetireActiveWorker", "SpawnWorker"]'
reflect describe rbee.hive.v1.WorkerProcess
check_described "fields of rbee.hive.v1.WorkerProcess" fields \
    '[["pid", 1], ["ppid", 2], ["worker_name", 3], ["exe_path", 4], ["argv", 5], ["uid", 6],
      ["user", 7], ["state", 8], ["started_at", 9], ["cpu_percent", 10], ["rss_bytes", 11],
      ["listening_ports", 12], ["worker_id", 13], ["model", 14], ["device", 15], ["port", 16]]'
reflect describe rbee.hive.v1.StoppedProcess
check_described "fields of rbee.hive.v1.StoppedProcess" fields \
    '[["pid", 1], ["worker_name", 2], ["method", 3], ["exit_code", 4], ["signal", 5],
      ["elapsed", 6], ["other_processes", 7]]'

step "health"
call_method grpc.health.v1.Health/Check '{}' 
check "health of the server" 'r' '{"status": "SERVING"}'
call_method grpc.health.v1.Health/Check "{\"service\": \"$SERVICE\"}"
check "health of $SERVICE" 'r' '{"status": "SERVING"}'

step "GetHiveInfo"
call GetHiveInfo '{"job_id": "grpcurl-hive-info"}'
hive_version="$("$INTEROP_BIN_DIR/rbee-hive" --version | cut -d' ' -f2)"
memory_total_bytes=$(($(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) * 1024))
check "GetHiveInfo job id" 'r["jobId"]' '"grpcurl-hive-info"'
check "hive id" 'r["hive"]["hiveId"]' "\"$(cat "$STATE_DIR/hive-id")\""
check "hive name" 'r["hive"]["name"]' '"grpcurl-interop"'
check "hive version" 'r["hive"]["version"]' "\"$hive_version\""
check "hostname" 'r["hive"]["hostname"]' "\"$(uname -n)\""
check "kernel" 'r["hive"]["kernel"]' "\"$(uname -r)\""
check "arch" 'r["hive"]["arch"]' "\"$(uname -m)\""
# The hive counts the CPUs it may use, which cgroup limits can make fewer than all.
check "cpu count" "1 <= r[\"hive\"][\"cpuCount\"] <= $(nproc --all)" 'true'
check "memory total" 'r["hive"]["memoryTotalBytes"]' "\"$memory_total_bytes\""
check "first device" '[r["hive"]["devices"][0][key] for key in ("id", "memoryTotalBytes")]' \
    "[\"cpu\", \"$memory_total_bytes\"]"
check "catalog dir" 'r["hive"]["catalogDir"]' "\"$(realpath "$CATALOG_DIR")\""
check "uptime is a duration" 'r["hive"]["uptime"].endswith("s")' 'true'

step "ListWorkerBinaries and GetWorkerBinary"
llm_path="$(realpath "$CATALOG_DIR/llm-worker")"
llm_sha256="$(sha256sum "$llm_path" | cut -d' ' -f1)"
llm_size="$(stat -c %s "$llm_path")"
call ListWorkerBinaries '{}'
check "binary names" '[b["name"] for b in r["binaries"]]' \
    '["llm-worker", "spare-worker", "spawnable-worker"]'
check "folder entry" \
    '{k: r["binaries"][2][k] for k in ("path", "layout", "platform", "version")}' \
    "{\"path\": \"$(realpath "$CATALOG_DIR")/spawnable-worker/spawnable-worker\",
      \"layout\": \"BINARY_LAYOUT_DIRECTORY\", \"platform\": \"$(uname -m)-linux\",
      \"version\": \"1.0.0\"}"
check "generated job id" \
    're.fullmatch(r"job-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", r["jobId"]) is not None' \
    'true'
check "llm-worker entry" \
    '{k: r["binaries"][0][k] for k in ("path", "layout", "sizeBytes", "sha256", "executable", "platform", "version", "source", "symlinkTarget")}' \
    "{\"path\": \"$llm_path\", \"layout\": \"BINARY_LAYOUT_FILE\", \"sizeBytes\": \"$llm_size\",
      \"sha256\": \"$llm_sha256\", \"executable\": true, \"platform\": \"$(uname -m)-linux\",
      \"version\": \"\", \"source\": \"\", \"symlinkTarget\": \"\"}"
listed_entry="$("$PYTHON" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["binaries"][0]))' "$RESPONSE")"
call GetWorkerBinary '{"job_id": "grpcurl-get-binary", "name": "llm-worker"}'
check "GetWorkerBinary job id" 'r["jobId"]' '"grpcurl-get-binary"'
check "GetWorkerBinary equals the listed entry" 'r["binary"]' "$listed_entry"
call_expecting_error GetWorkerBinary '{"job_id": "grpcurl-missing-binary", "name": "no-such-worker"}' \
    NotFound grpcurl-missing-binary
missing_binary_message="$ERROR_MESSAGE"
call_expecting_error GetWorkerBinary '{"name": "../x"}' InvalidArgument ""

step "ListWorkerProcesses and GetWorkerProcess"
call ListWorkerProcesses '{}'
check "worker pids, sorted" '[p["pid"] for p in r["processes"]]' "[$sorted_worker_pids]"
check "worker names" 'sorted({p["workerName"] for p in r["processes"]})' '["llm-worker"]'
check "exiting worker" \
    "{k: v for p in r[\"processes\"] if p[\"pid\"] == $exiting_pid
      for k, v in p.items() if k in (\"ppid\", \"exePath\", \"argv\", \"listeningPorts\")}" \
    "{\"ppid\": $exiting_parent, \"exePath\": \"$llm_path\",
      \"argv\": [\"$CATALOG_DIR/llm-worker\", \"--exit-code\", \"3\"],
      \"listeningPorts\": [$exiting_port]}"
call ListWorkerProcesses '{"worker_name": "spare-worker"}'
check "processes of spare-worker" 'r["processes"]' '[]'
call ListWorkerProcesses '{"worker_name": "llm-worker"}'
check "processes of llm-worker" '[p["pid"] for p in r["processes"]]' "[$sorted_worker_pids]"

call GetWorkerProcess "{\"job_id\": \"grpcurl-get-process\", \"pid\": $stubborn_pid}"
check "GetWorkerProcess job id" 'r["jobId"]' '"grpcurl-get-process"'
check "stubborn worker" \
    '{k: r["process"][k] for k in ("pid", "workerName", "argv", "uid", "user", "state", "listeningPorts")}' \
    "{\"pid\": $stubborn_pid, \"workerName\": \"llm-worker\",
      \"argv\": [\"$CATALOG_DIR/llm-worker\", \"--ignore-sigterm\"], \"uid\": $(id -u),
      \"user\": \"$(id -un)\", \"state\": \"sleeping\", \"listeningPorts\": [$stubborn_port]}"
call_expecting_error GetWorkerProcess '{"pid": 0}' InvalidArgument ""
call_expecting_error GetWorkerProcess "{\"job_id\": \"grpcurl-get-bystander\", \"pid\": $BYSTANDER_PID}" \
    NotFound grpcurl-get-bystander
call_expecting_error DeleteWorkerProcess "{\"pid\": $BYSTANDER_PID, \"grace_period\": \"0s\"}" NotFound ""
process_running "$BYSTANDER_PID" || fail "DeleteWorkerProcess stopped the non-worker pid $BYSTANDER_PID"

step "DeleteWorkerBinary"
call DeleteWorkerBinary '{"job_id": "grpcurl-delete-spare", "name": "spare-worker"}'
check "deleted entry" '[r["jobId"], r["binary"]["name"], r["stopped"]]' \
    '["grpcurl-delete-spare", "spare-worker", []]'
[[ ! -e "$CATALOG_DIR/spare-worker" ]] || fail "spare-worker is still in the catalog after its deletion"
call_expecting_error DeleteWorkerBinary '{"name": "llm-worker"}' FailedPrecondition ""
"$PYTHON" -c '
import re, sys
message, expected = sys.argv[1], sys.argv[2]
named = sorted(int(pid) for pid in re.findall(r"\b\d+\b", message))
if named != [int(pid) for pid in expected.split(",")]:
    sys.exit(f"FAIL: in-use error names pids {named}, expected {expected}; message: {message}")
' "$ERROR_MESSAGE" "$sorted_worker_pids" || exit 1
[[ -x "$CATALOG_DIR/llm-worker" ]] || fail "a rejected DeleteWorkerBinary removed llm-worker"

step "DeleteWorkerProcess, then Narrate on the finished job"
call DeleteWorkerProcess "{\"job_id\": \"grpcurl-stop-exiting\", \"pid\": $exiting_pid, \"grace_period\": \"5s\"}"
check "stopped exiting worker" \
    '{k: v for k, v in r["stopped"].items() if k != "elapsed"} | {"jobId": r["jobId"]}' \
    "{\"jobId\": \"grpcurl-stop-exiting\", \"pid\": $exiting_pid, \"workerName\": \"llm-worker\",
      \"method\": \"STOP_METHOD_TERMINATED\", \"exitCode\": 3, \"otherProcesses\": 0}"
call ListWorkerProcesses '{}'
check "worker pids after the stop" "$exiting_pid in [p[\"pid\"] for p in r[\"processes\"]]" 'false'

call Narrate '{"job_id": "grpcurl-stop-exiting"}'
check_stream "narration job ids" 'sorted({e["jobId"] for e in r})' '["grpcurl-stop-exiting"]'
check_stream "narration seq" '[int(e["seq"]) for e in r]' '[0, 1, 2, 3]'
check_stream "narration actions" '[e["action"] for e in r]' \
    '["process.delete", "process.signal", "process.exit", "job.finish"]'
check_stream "exit narrated" 'r[2]["message"].startswith(f"worker process '"$exiting_pid"' (llm-worker) exited with code 3 after ")' \
    'true'
check_stream "narration outcomes" '[e["outcome"] for e in r]' \
    '[null, null, null, {"code": 0, "message": ""}]'

step "Narrate on a chosen job id before the job starts"
# The stream waits up to 10s for the job, so it can be opened before the request that names it.
narration="$INTEROP_WORK_DIR/narration.json"
"$GRPCURL" -plaintext -max-time 30 -emit-defaults \
    -d '{"job_id": "grpcurl-stop-stubborn", "wait_for_start": "10s"}' \
    "$HIVE_ADDR" "$SERVICE/Narrate" >"$narration" 2>"$INTEROP_WORK_DIR/narration.err" &
narrate_pid=$!
interop_child_pids+=("$narrate_pid")
call DeleteWorkerProcess "{\"job_id\": \"grpcurl-stop-stubborn\", \"pid\": $stubborn_pid, \"grace_period\": \"0.5s\"}"
check "stopped stubborn worker" \
    '{k: v for k, v in r["stopped"].items() if k != "elapsed"}' \
    "{\"pid\": $stubborn_pid, \"workerName\": \"llm-worker\",
      \"method\": \"STOP_METHOD_KILLED_AFTER_GRACE\", \"signal\": 9, \"otherProcesses\": 0}"
check "grace period waited" 'float(r["stopped"]["elapsed"].rstrip("s")) >= 0.5' 'true'
wait "$narrate_pid" || fail "Narrate grpcurl-stop-stubborn failed: $(cat "$INTEROP_WORK_DIR/narration.err")"
cp "$narration" "$RESPONSE"
check_stream "narration seq" '[int(e["seq"]) for e in r]' '[0, 1, 2, 3, 4]'
check_stream "narration steps" '[[e["level"], e["action"]] for e in r]' \
    '[["NARRATION_LEVEL_INFO", "process.delete"], ["NARRATION_LEVEL_INFO", "process.signal"],
      ["NARRATION_LEVEL_WARN", "process.signal"], ["NARRATION_LEVEL_INFO", "process.exit"],
      ["NARRATION_LEVEL_INFO", "job.finish"]]'
check_stream "final outcome" 'r[-1]["outcome"]' '{"code": 0, "message": ""}'

step "Narrate errors and failed jobs"
# Narrate does not run as a job itself, so its errors carry no rbee-job-id trailer.
call_expecting_error Narrate '{"job_id": "grpcurl-never-started"}' NotFound none
call_expecting_error Narrate '{"job_id": "grpcurl-never-started", "wait_for_start": "0.2s"}' \
    NotFound none
call_expecting_error Narrate '{"job_id": "../x"}' InvalidArgument none
call Narrate '{"job_id": "grpcurl-missing-binary"}'
check_stream "outcome of the failed job" 'r[-1]["outcome"]' \
    "$("$PYTHON" -c 'import json, sys; print(json.dumps({"code": 5, "message": sys.argv[1]}))' "$missing_binary_message")"
check_stream "level of the failed job's end" 'r[-1]["level"]' '"NARRATION_LEVEL_ERROR"'
# A reused job id is rejected before a job starts, so there is no job id to return either.
call_expecting_error GetHiveInfo '{"job_id": "grpcurl-hive-info"}' AlreadyExists none

step "DeleteWorkerBinary with force"
call DeleteWorkerBinary '{"job_id": "grpcurl-force-delete", "name": "llm-worker", "force": true}'
check "force-deleted entry" 'r["binary"]["name"]' '"llm-worker"'
check "processes stopped first" \
    '[{k: v for k, v in s.items() if k != "elapsed"} for s in r["stopped"]]' \
    "[{\"pid\": $plain_pid, \"workerName\": \"llm-worker\", \"method\": \"STOP_METHOD_TERMINATED\",
       \"exitCode\": 0, \"otherProcesses\": 0}]"
call ListWorkerBinaries '{}'
check "catalog after the deletions" '[b["name"] for b in r["binaries"]]' '["spawnable-worker"]'
call ListWorkerProcesses '{}'
check "worker processes after the deletions" 'r["processes"]' '[]'

step "SpawnWorker, active workers and Heartbeat"
# SpawnWorker takes a model name from the model directory or an absolute path that exists.
model_path="$MODEL_DIR/tiny.gguf"
: >"$model_path"
spawnable_path="$(realpath "$CATALOG_DIR")/spawnable-worker/spawnable-worker"
call SpawnWorker "{\"job_id\": \"grpcurl-spawn\", \"binary\": \"spawnable-worker\",
    \"model\": \"$model_path\", \"device\": \"cpu\", \"ready_timeout\": \"10s\"}"
spawned_id="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["worker"]["workerId"])' "$RESPONSE")"
spawned_pid="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["worker"]["pid"])' "$RESPONSE")"
spawned_port="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["worker"]["port"])' "$RESPONSE")"
check "spawn job id" 'r["jobId"]' '"grpcurl-spawn"'
check "worker id format" 're.fullmatch(r"worker-[0-9a-f]{12}", r["worker"]["workerId"]) is not None' 'true'
check "spawned worker" \
    '{k: r["worker"][k] for k in ("binary", "model", "device", "state", "argv", "heartbeatSource", "lostReason")}' \
    "{\"binary\": \"spawnable-worker\", \"model\": \"$model_path\", \"device\": \"cpu\",
      \"state\": \"ACTIVE_WORKER_STATE_READY\",
      \"argv\": [\"$spawnable_path\", \"--port\", \"$spawned_port\"],
      \"heartbeatSource\": \"HEARTBEAT_SOURCE_READINESS_CHECK\", \"lostReason\": \"\"}"
check "port assigned" "$spawned_port > 0" 'true'

call Narrate '{"job_id": "grpcurl-spawn"}'
check_stream "spawn narration actions" '[e["action"] for e in r]' \
    '["worker.spawn", "worker.spawn", "worker.start", "worker.log", "worker.ready", "job.finish"]'
check_stream "worker log line narrated" 'r[3]["message"]' "\"listening on $spawned_port\""
check_stream "spawn outcome" 'r[-1]["outcome"]' '{"code": 0, "message": ""}'

call ListActiveWorkers '{}'
check "active worker ids" '[w["workerId"] for w in r["workers"]]' "[\"$spawned_id\"]"
call ListWorkerProcesses '{}'
check "spawned worker process" \
    '[{k: p[k] for k in ("pid", "workerName", "workerId", "model", "device", "port", "listeningPorts")} for p in r["processes"]]' \
    "[{\"pid\": $spawned_pid, \"workerName\": \"spawnable-worker\", \"workerId\": \"$spawned_id\",
       \"model\": \"$model_path\", \"device\": \"cpu\", \"port\": $spawned_port,
       \"listeningPorts\": [$spawned_port]}]"

call_method "$SERVICE/Heartbeat" "{\"worker_id\": \"$spawned_id\", \"ready\": true}"
check "heartbeat interval" 'r' '{"interval": "10s"}'
call GetActiveWorker "{\"job_id\": \"grpcurl-get-active\", \"worker_id\": \"$spawned_id\"}"
check "active worker after a heartbeat" \
    '[r["jobId"], r["worker"]["pid"], r["worker"]["state"], r["worker"]["heartbeatSource"], r["worker"]["lastHeartbeat"] is not None]' \
    "[\"grpcurl-get-active\", $spawned_pid, \"ACTIVE_WORKER_STATE_READY\", \"HEARTBEAT_SOURCE_WORKER\", true]"

call_expecting_error GetActiveWorker '{"job_id": "grpcurl-get-unknown", "worker_id": "worker-000000000000"}' \
    NotFound grpcurl-get-unknown
call_expecting_error Heartbeat '{"worker_id": "worker-000000000000"}' NotFound none
call_expecting_error SpawnWorker \
    "{\"binary\": \"no-such-worker\", \"model\": \"$model_path\", \"device\": \"cpu\"}" NotFound ""
call_expecting_error SpawnWorker \
    "{\"binary\": \"spawnable-worker\", \"model\": \"$model_path\", \"device\": \"cuda:7\"}" \
    InvalidArgument ""
call ListActiveWorkers '{}'
check "active workers after failed spawns" '[w["workerId"] for w in r["workers"]]' "[\"$spawned_id\"]"

call RetireActiveWorker "{\"job_id\": \"grpcurl-retire\", \"worker_id\": \"$spawned_id\", \"grace_period\": \"5s\"}"
check "retired worker" '[r["jobId"], r["worker"]["workerId"]]' "[\"grpcurl-retire\", \"$spawned_id\"]"
check "retired process" \
    '{k: r["stopped"][k] for k in ("pid", "workerName", "method", "otherProcesses")}' \
    "{\"pid\": $spawned_pid, \"workerName\": \"spawnable-worker\", \"method\": \"STOP_METHOD_TERMINATED\",
      \"otherProcesses\": 0}"
call ListActiveWorkers '{}'
check "active workers at the end" 'r["workers"]' '[]'
call_expecting_error RetireActiveWorker "{\"worker_id\": \"$spawned_id\"}" NotFound ""
call ListWorkerProcesses '{}'
check "worker processes at the end" 'r["processes"]' '[]'
process_running "$BYSTANDER_PID" || fail "the non-worker pid $BYSTANDER_PID is gone at the end"

step "DownloadWorker, models, BuildWorker, CancelJob and Infer"
printf '#!/bin/sh\nexit 0\n' >"$INTEROP_WORK_DIR/imported-worker"
call DownloadWorker "{\"job_id\": \"grpcurl-download\", \"name\": \"imported-worker\",
    \"url\": \"file://$INTEROP_WORK_DIR/imported-worker\", \"version\": \"0.1.0\"}"
check "downloaded worker binary" \
    '[r["jobId"], r["binary"]["name"], r["binary"]["layout"], r["binary"]["executable"], r["binary"]["platform"], r["binary"]["version"]]' \
    '["grpcurl-download", "imported-worker", "BINARY_LAYOUT_DIRECTORY", true, "script", "0.1.0"]'
call_expecting_error DownloadWorker \
    "{\"name\": \"imported-worker\", \"url\": \"file://$INTEROP_WORK_DIR/imported-worker\"}" \
    AlreadyExists ""
call_expecting_error DownloadWorker '{"name": "w", "url": "ftp://127.0.0.1/w"}' InvalidArgument ""

printf "GGUF tiny model" >"$INTEROP_WORK_DIR/downloaded.gguf"
call DownloadModel "{\"name\": \"downloaded.gguf\", \"url\": \"file://$INTEROP_WORK_DIR/downloaded.gguf\"}"
check "downloaded model" '[r["model"]["name"], r["model"]["format"], r["model"]["sizeBytes"]]' \
    '["downloaded.gguf", "gguf", "15"]'
call ListModels '{}'
check "listed models" '[m["name"] for m in r["models"]]' '["downloaded.gguf", "tiny.gguf"]'
call GetModel '{"name": "downloaded.gguf"}'
check "model source" 'r["model"]["sourceUrl"]' "\"file://$INTEROP_WORK_DIR/downloaded.gguf\""
call DeleteModel '{"name": "downloaded.gguf"}'
check "deleted model" '[r["model"]["name"], r["retiredWorkers"]]' '["downloaded.gguf", []]'
call_expecting_error GetModel '{"job_id": "grpcurl-get-model", "name": "downloaded.gguf"}' \
    NotFound grpcurl-get-model

call_expecting_error BuildWorker '{"name": "built", "source": "relative/dir"}' InvalidArgument ""
call_expecting_error CancelJob '{"job_id": "grpcurl-no-such-job"}' NotFound none
call_expecting_error CancelJob '{"job_id": "grpcurl-download"}' FailedPrecondition none
call_expecting_error Infer '{"model": "downloaded.gguf", "prompt": "Hello"}' FailedPrecondition ""
expected_infer_error='no ready worker serves model "downloaded.gguf"; no models are being served'
[[ "$ERROR_MESSAGE" == "$expected_infer_error" ]] ||
    fail "Infer without workers: message $ERROR_MESSAGE, expected $expected_infer_error"

echo "grpcurl interop: all checks passed"
