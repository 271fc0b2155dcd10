"""Operator scenario against a real rbee-hive, through a client generated from proto/.

scripts/interop/python.sh generates the stubs with grpcio-tools, starts the hive and three
worker processes, and runs this script. The script looks at the hive, its catalog and its worker
processes as an operator would, and tries to delete a binary that is in use. It stops a worker
that ignores SIGTERM while following the stop's narration live. Then it checks the error codes
and the `rbee-job-id` trailer of failed calls. Exits non-zero on the first mismatch.
"""

import argparse
import hashlib
import os
import platform
import pwd
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

# Seconds any single call may take before it counts as a failure.
CALL_TIMEOUT = 30

JOB_ID_TRAILER = "rbee-job-id"
GENERATED_JOB_ID = re.compile(r"job-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")


class Mismatch(Exception):
    """A response that differs from what the scenario expects."""


def check(label, actual, expected):
    """Raise Mismatch unless `actual == expected`."""
    if actual != expected:
        raise Mismatch(f"{label}: got {actual!r}, expected {expected!r}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True, help="folder with the generated Python code")
    parser.add_argument("--address", required=True, help="host:port of the hive")
    parser.add_argument("--hive-name", required=True, help="--name the hive was started with")
    parser.add_argument("--catalog-dir", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument(
        "--exiting-worker",
        required=True,
        type=int,
        help="pid of an llm-worker started with `--exit-code 3`",
    )
    parser.add_argument(
        "--stubborn-worker",
        required=True,
        type=int,
        help="pid of an llm-worker started with `--ignore-sigterm`",
    )
    parser.add_argument(
        "--embed-worker",
        required=True,
        type=int,
        help="pid of an embed-worker started without arguments",
    )
    return parser.parse_args()


def process_state(pid):
    """Return the one-letter scheduler state of `pid` from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    # The command name is in parentheses and may contain spaces, so split after the last one.
    return stat.rsplit(")", 1)[1].split()[0]


def parent_pid(pid):
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def accepts_connections(port):
    """Return whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


class Scenario:
    def __init__(self, args, grpc, pb, stub):
        self.args = args
        self.grpc = grpc
        self.pb = pb
        self.hive = stub
        self.catalog_dir = args.catalog_dir.resolve()
        self.llm_pids = sorted([args.exiting_worker, args.stubborn_worker])
        self.all_pids = sorted(self.llm_pids + [args.embed_worker])

    def run(self):
        self.describe_hive()
        self.inspect_catalog()
        self.inspect_processes()
        self.delete_binary_in_use()
        self.stop_stubborn_worker_while_following_narration()
        self.stop_exiting_worker()
        self.reject_non_worker_process()
        self.reject_invalid_arguments()
        self.return_job_id_of_failed_calls()
        self.delete_unused_binary()

    def expect_error(self, label, method, request, code):
        """Call `method` and return its RpcError, which must carry the status `code`."""
        try:
            method(request, timeout=CALL_TIMEOUT)
        except self.grpc.RpcError as error:
            check(f"{label}: status code", error.code(), code)
            return error
        raise Mismatch(f"{label}: the call succeeded, expected {code.name}")

    def narration(self, job_id):
        """Return every narration event of a job that has finished."""
        request = self.pb.NarrateRequest(job_id=job_id)
        return list(self.hive.Narrate(request, timeout=CALL_TIMEOUT))

    def describe_hive(self):
        print("--- hive info")
        pb = self.pb
        response = self.hive.GetHiveInfo(
            pb.GetHiveInfoRequest(job_id="py-hive-info"), timeout=CALL_TIMEOUT
        )
        hive = response.hive
        check("job id", response.job_id, "py-hive-info")
        check("hive id", hive.hive_id, (self.args.state_dir / "hive-id").read_text().strip())
        check("name", hive.name, self.args.hive_name)
        check("hostname", hive.hostname, socket.gethostname())
        check("kernel", hive.kernel, platform.release())
        check("arch", hive.arch, platform.machine())
        check("catalog dir", hive.catalog_dir, str(self.catalog_dir))
        check("first device", hive.devices[0].id, "cpu")
        check("cpu memory", hive.devices[0].memory_total_bytes, hive.memory_total_bytes)
        # The hive counts the CPUs it may use, which cgroup limits can make fewer than all.
        check("cpu count in range", 1 <= hive.cpu_count <= os.cpu_count(), True)
        started = hive.started_at.ToDatetime().timestamp()
        check("started in the past", started <= time.time(), True)
        check("uptime is positive", hive.uptime.ToNanoseconds() > 0, True)

        response = self.hive.GetHiveInfo(pb.GetHiveInfoRequest(), timeout=CALL_TIMEOUT)
        check("generated job id", bool(GENERATED_JOB_ID.fullmatch(response.job_id)), True)
        check("same hive id", response.hive.hive_id, hive.hive_id)

    def inspect_catalog(self):
        print("--- worker binaries")
        pb = self.pb
        response = self.hive.ListWorkerBinaries(
            pb.ListWorkerBinariesRequest(), timeout=CALL_TIMEOUT
        )
        check("binary names", [b.name for b in response.binaries], ["embed-worker", "llm-worker"])
        for binary in response.binaries:
            path = self.catalog_dir / binary.name
            stat = path.stat()
            label = f"binary {binary.name}"
            check(f"{label}: path", binary.path, str(path))
            check(f"{label}: layout", binary.layout, pb.BINARY_LAYOUT_FILE)
            check(f"{label}: size", binary.size_bytes, stat.st_size)
            check(f"{label}: sha256", binary.sha256, hashlib.sha256(path.read_bytes()).hexdigest())
            check(f"{label}: modified", binary.modified_at.ToNanoseconds(), stat.st_mtime_ns)
            check(f"{label}: executable", binary.executable, True)
            check(f"{label}: platform", binary.platform, f"{platform.machine()}-linux")
            check(f"{label}: version", binary.version, "")

        listed = {b.name: b for b in response.binaries}
        response = self.hive.GetWorkerBinary(
            pb.GetWorkerBinaryRequest(name="llm-worker"), timeout=CALL_TIMEOUT
        )
        check("GetWorkerBinary equals the listed entry", response.binary, listed["llm-worker"])

    def inspect_processes(self):
        print("--- worker processes")
        pb = self.pb
        response = self.hive.ListWorkerProcesses(
            pb.ListWorkerProcessesRequest(), timeout=CALL_TIMEOUT
        )
        check("worker pids", [p.pid for p in response.processes], self.all_pids)

        expected_argv = {
            self.args.exiting_worker: ["llm-worker", "--exit-code", "3"],
            self.args.stubborn_worker: ["llm-worker", "--ignore-sigterm"],
            self.args.embed_worker: ["embed-worker"],
        }
        user = pwd.getpwuid(os.getuid()).pw_name
        for process in response.processes:
            name, *flags = expected_argv[process.pid]
            label = f"worker process {process.pid}"
            check(f"{label}: worker name", process.worker_name, name)
            check(f"{label}: exe path", process.exe_path, str(self.catalog_dir / name))
            check(f"{label}: argv", list(process.argv), [str(self.args.catalog_dir / name), *flags])
            check(f"{label}: ppid", process.ppid, parent_pid(process.pid))
            check(f"{label}: uid", process.uid, os.getuid())
            check(f"{label}: user", process.user, user)
            check(f"{label}: state", process.state, "sleeping")
            check(f"{label}: one listening port", len(process.listening_ports), 1)
            port = process.listening_ports[0]
            check(f"{label}: accepts on port {port}", accepts_connections(port), True)

        response = self.hive.ListWorkerProcesses(
            pb.ListWorkerProcessesRequest(worker_name="embed-worker"), timeout=CALL_TIMEOUT
        )
        check("embed-worker pids", [p.pid for p in response.processes], [self.args.embed_worker])

        stubborn = self.args.stubborn_worker
        response = self.hive.GetWorkerProcess(
            pb.GetWorkerProcessRequest(pid=stubborn), timeout=CALL_TIMEOUT
        )
        check("GetWorkerProcess pid", response.process.pid, stubborn)
        check("GetWorkerProcess worker name", response.process.worker_name, "llm-worker")
        check("GetWorkerProcess argv", list(response.process.argv)[1:], ["--ignore-sigterm"])

    def delete_binary_in_use(self):
        print("--- delete a binary in use")
        pb = self.pb
        error = self.expect_error(
            "DeleteWorkerBinary llm-worker",
            self.hive.DeleteWorkerBinary,
            pb.DeleteWorkerBinaryRequest(job_id="py-delete-in-use", name="llm-worker"),
            self.grpc.StatusCode.FAILED_PRECONDITION,
        )
        named_pids = sorted(int(pid) for pid in re.findall(r"\b\d+\b", error.details()))
        check("pids named by the in-use error", named_pids, self.llm_pids)
        check("llm-worker still in the catalog", (self.catalog_dir / "llm-worker").exists(), True)

    def stop_stubborn_worker_while_following_narration(self):
        print("--- stop a worker that ignores SIGTERM, following the narration live")
        pb = self.pb
        pid = self.args.stubborn_worker
        job_id = "py-stop-stubborn"
        grace_seconds = 1

        # Subscribe first: the stream waits up to 10s for the job that the delete starts.
        stream = self.hive.Narrate(
            pb.NarrateRequest(job_id=job_id, wait_for_start={"seconds": 10}),
            timeout=CALL_TIMEOUT,
        )
        delete = self.hive.DeleteWorkerProcess.future(
            pb.DeleteWorkerProcessRequest(
                job_id=job_id, pid=pid, grace_period={"seconds": grace_seconds}
            ),
            timeout=CALL_TIMEOUT,
        )
        events = []
        events_before_response = 0
        for event in stream:
            events.append(event)
            if not delete.done():
                events_before_response += 1
        response = delete.result()

        check("response job id", response.job_id, job_id)
        stopped = response.stopped
        check("stopped pid", stopped.pid, pid)
        check("stopped worker name", stopped.worker_name, "llm-worker")
        check("stop method", stopped.method, pb.STOP_METHOD_KILLED_AFTER_GRACE)
        check("killed by signal", (stopped.HasField("signal"), stopped.signal), (True, 9))
        check("no exit code", stopped.HasField("exit_code"), False)
        check("grace period waited", stopped.elapsed.ToNanoseconds() >= grace_seconds * 10**9, True)

        check("narration job ids", {e.job_id for e in events}, {job_id})
        check("narration seq", [e.seq for e in events], list(range(len(events))))
        check(
            "narration steps",
            [(pb.NarrationLevel.Name(e.level), e.action) for e in events],
            [
                ("NARRATION_LEVEL_INFO", "process.delete"),
                ("NARRATION_LEVEL_INFO", "process.signal"),
                ("NARRATION_LEVEL_WARN", "process.signal"),
                ("NARRATION_LEVEL_INFO", "process.exit"),
                ("NARRATION_LEVEL_INFO", "job.finish"),
            ],
        )
        check(
            "only the final event has an outcome",
            [e.HasField("outcome") for e in events],
            [False] * (len(events) - 1) + [True],
        )
        check("outcome code", events[-1].outcome.code, 0)
        check("outcome message", events[-1].outcome.message, "")
        # The SIGTERM event happens a whole grace period before the delete returns, so a live
        # stream delivers at least the first two events while the delete is still running.
        check("events delivered live", events_before_response >= 2, True)
        check("stubborn worker gone", process_state(pid) in (None, "Z"), True)

    def stop_exiting_worker(self):
        print("--- stop a worker with the default grace period")
        pb = self.pb
        pid = self.args.exiting_worker
        response = self.hive.DeleteWorkerProcess(
            pb.DeleteWorkerProcessRequest(job_id="py-stop-exiting", pid=pid),
            timeout=CALL_TIMEOUT,
        )
        stopped = response.stopped
        check("stop method", stopped.method, pb.STOP_METHOD_TERMINATED)
        check("exit code", (stopped.HasField("exit_code"), stopped.exit_code), (True, 3))
        check("no signal", stopped.HasField("signal"), False)
        events = self.narration("py-stop-exiting")
        check(
            "narration actions",
            [e.action for e in events],
            ["process.delete", "process.signal", "process.exit", "job.finish"],
        )
        check("outcome code", events[-1].outcome.code, 0)

        response = self.hive.ListWorkerProcesses(
            pb.ListWorkerProcessesRequest(), timeout=CALL_TIMEOUT
        )
        check("worker pids after the stops", [p.pid for p in response.processes],
              [self.args.embed_worker])

    def reject_non_worker_process(self):
        print("--- a process that is not a worker")
        pb = self.pb
        code = self.grpc.StatusCode.NOT_FOUND
        bystander = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
        try:
            self.expect_error(
                "GetWorkerProcess of a sleep",
                self.hive.GetWorkerProcess,
                pb.GetWorkerProcessRequest(pid=bystander.pid),
                code,
            )
            self.expect_error(
                "DeleteWorkerProcess of a sleep",
                self.hive.DeleteWorkerProcess,
                pb.DeleteWorkerProcessRequest(pid=bystander.pid, grace_period={}),
                code,
            )
            check("sleep still running", bystander.poll(), None)
            check("sleep state", process_state(bystander.pid) not in (None, "Z"), True)
        finally:
            bystander.kill()
            bystander.wait()

    def reject_invalid_arguments(self):
        print("--- invalid arguments")
        pb = self.pb
        code = self.grpc.StatusCode.INVALID_ARGUMENT
        self.expect_error(
            "GetWorkerBinary ../x",
            self.hive.GetWorkerBinary,
            pb.GetWorkerBinaryRequest(name="../x"),
            code,
        )
        self.expect_error(
            "DeleteWorkerBinary ../x",
            self.hive.DeleteWorkerBinary,
            pb.DeleteWorkerBinaryRequest(name="../x"),
            code,
        )
        self.expect_error(
            "GetWorkerProcess 0",
            self.hive.GetWorkerProcess,
            pb.GetWorkerProcessRequest(pid=0),
            code,
        )
        self.expect_error(
            "DeleteWorkerProcess 0",
            self.hive.DeleteWorkerProcess,
            pb.DeleteWorkerProcessRequest(pid=0),
            code,
        )
        self.expect_error(
            "DeleteWorkerProcess with a negative grace period",
            self.hive.DeleteWorkerProcess,
            pb.DeleteWorkerProcessRequest(
                pid=self.args.embed_worker, grace_period={"seconds": -1}
            ),
            code,
        )
        check("embed-worker still running", process_state(self.args.embed_worker), "S")

    def return_job_id_of_failed_calls(self):
        print("--- job id of failed calls")
        pb = self.pb
        code = self.grpc.StatusCode.NOT_FOUND
        error = self.expect_error(
            "GetWorkerBinary with a chosen job id",
            self.hive.GetWorkerBinary,
            pb.GetWorkerBinaryRequest(job_id="py-missing-binary", name="no-such-worker"),
            code,
        )
        trailers = dict(error.trailing_metadata())
        check("rbee-job-id of a chosen job id", trailers.get(JOB_ID_TRAILER), "py-missing-binary")

        error = self.expect_error(
            "GetWorkerBinary with a generated job id",
            self.hive.GetWorkerBinary,
            pb.GetWorkerBinaryRequest(name="no-such-worker"),
            code,
        )
        job_id = dict(error.trailing_metadata()).get(JOB_ID_TRAILER, "")
        check("rbee-job-id is generated", bool(GENERATED_JOB_ID.fullmatch(job_id)), True)
        # The trailer names the failed job, so its narration can be read after the fact.
        final = self.narration(job_id)[-1]
        check("outcome code of the failed job", final.outcome.code, code.value[0])
        check("outcome message of the failed job", final.outcome.message, error.details())

    def delete_unused_binary(self):
        print("--- delete a binary no process runs")
        pb = self.pb
        response = self.hive.DeleteWorkerBinary(
            pb.DeleteWorkerBinaryRequest(name="llm-worker"), timeout=CALL_TIMEOUT
        )
        check("deleted name", response.binary.name, "llm-worker")
        check("processes stopped first", list(response.stopped), [])
        check("llm-worker file removed", (self.catalog_dir / "llm-worker").exists(), False)
        response = self.hive.ListWorkerBinaries(
            pb.ListWorkerBinariesRequest(), timeout=CALL_TIMEOUT
        )
        check("binaries left", [b.name for b in response.binaries], ["embed-worker"])


def main():
    args = parse_args()
    # The generated modules import each other as `rbee.hive.v1.*`, so their root goes on the path.
    sys.path.insert(0, args.stubs)
    import grpc
    from rbee.hive.v1 import hive_pb2, hive_pb2_grpc

    with grpc.insecure_channel(args.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        scenario = Scenario(args, grpc, hive_pb2, hive_pb2_grpc.HiveServiceStub(channel))
        try:
            scenario.run()
        except Mismatch as mismatch:
            print(f"FAIL: {mismatch}", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            print(f"FAIL: unexpected {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print("python interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
