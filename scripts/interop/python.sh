#!/usr/bin/env bash
# Check that a Python client generated from proto/ with grpcio-tools works against a real
# rbee-hive: installs the pinned packages into <repo>/.tools/venv, generates the stubs into a
# temporary folder, starts a hive and worker processes, and runs interop/python/scenario.py.
#
# Usage: scripts/interop/python.sh
# Needs `cargo build --workspace --bins` and PyPI access on the first run (for the venv).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$INTEROP_REPO_ROOT/.tools/venv"
REQUIREMENTS="$INTEROP_REPO_ROOT/interop/python/requirements.txt"
# Records which requirements the venv was built from, so a later run skips pip unless they change.
REQUIREMENTS_STAMP="$VENV/rbee-requirements.sha256"

requirements_sha256="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ "$(cat "$REQUIREMENTS_STAMP" 2>/dev/null)" != "$requirements_sha256" ]] ||
    ! "$VENV/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    step "installing $(basename "$REQUIREMENTS") into $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS" ||
        fail "pip could not install $REQUIREMENTS into $VENV"
    echo "$requirements_sha256" >"$REQUIREMENTS_STAMP"
fi

interop_setup

step "generating Python stubs from proto/"
stubs_dir="$INTEROP_WORK_DIR/stubs"
mkdir -p "$stubs_dir"
mapfile -t proto_files < <(cd "$INTEROP_REPO_ROOT/proto" && find . -name '*.proto' | sort)
# grpc_tools.protoc adds its bundled google/protobuf/*.proto to the include path itself.
(cd "$INTEROP_REPO_ROOT/proto" &&
    "$VENV/bin/python" -m grpc_tools.protoc -I . \
        --python_out="$stubs_dir" --pyi_out="$stubs_dir" --grpc_python_out="$stubs_dir" \
        "${proto_files[@]}") ||
    fail "grpc_tools.protoc failed on ${proto_files[*]}"

add_worker_binary llm-worker
add_worker_binary embed-worker
start_hive python-interop
start_worker llm-worker --exit-code 3
exiting_pid="$WORKER_PID"
start_worker llm-worker --ignore-sigterm
stubborn_pid="$WORKER_PID"
start_worker embed-worker
embed_pid="$WORKER_PID"

step "running interop/python/scenario.py"
"$VENV/bin/python" "$INTEROP_REPO_ROOT/interop/python/scenario.py" \
    --stubs "$stubs_dir" --address "$HIVE_ADDR" --hive-name python-interop \
    --catalog-dir "$CATALOG_DIR" --state-dir "$STATE_DIR" \
    --exiting-worker "$exiting_pid" --stubborn-worker "$stubborn_pid" --embed-worker "$embed_pid"
