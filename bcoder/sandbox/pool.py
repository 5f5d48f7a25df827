"""The pool of sandbox workers: starts them, hands out programs, collects results in order."""
import dataclasses
import json
import os
import selectors
import shutil
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from bcoder.sandbox.judge import judge, worker_runs
from bcoder.sandbox.schema import ProgramResult, SandboxConfig, TestResult, UnitTests

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
GRACE_SECONDS = 30        # a worker silent this long past a program's timeout is stuck
PROGRESS_THRESHOLD = 200  # programs in a call before a progress bar shows by default


class WorkerDied(RuntimeError):
    pass


class _WorkerProcess:
    """One worker (one slot): at most one program in flight."""

    def __init__(self, config, slot):
        isolate = config.isolate if config.isolate is not None else os.geteuid() == 0
        if isolate and os.geteuid() != 0:
            raise PermissionError("SandboxConfig(isolate=True) needs root")
        settings = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
        settings["uid"] = config.uid_base + slot if isolate else None
        # A minimal environment: the caller's variables (tokens, paths) stay out of programs.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        self.process = subprocess.Popen([sys.executable, "-I", str(WORKER_SCRIPT), json.dumps(settings)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.fd = self.process.stdout.fileno()
        self.job = None           # index of the program in flight
        self.isolated, self.tmp = False, None
        self.deadline = 0.0

    def hello(self):
        hello = self.receive()
        self.isolated, self.tmp = hello["isolated"], hello["tmp"]

    def send(self, message):
        data = json.dumps(message).encode()
        try:
            self.process.stdin.write(struct.pack(">I", len(data)) + data)
            self.process.stdin.flush()
        except OSError as error:
            raise WorkerDied(f"sandbox worker {self.process.pid} died: {error}") from error

    def receive(self):
        header = self._read(4)
        return json.loads(self._read(struct.unpack(">I", header)[0]))

    def _read(self, size):
        data = b""
        while len(data) < size:
            chunk = os.read(self.fd, size - len(data))
            if not chunk:
                raise WorkerDied(f"sandbox worker {self.process.pid} died "
                                 f"(exit status {self.process.wait()})")
            data += chunk
        return data

    def close(self):
        try:
            self.process.stdin.close()     # end of requests: the worker cleans up and exits
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        if self.tmp and self.process.returncode != 0 and not self.isolated:
            shutil.rmtree(self.tmp, ignore_errors=True)    # a killed worker could not remove it


class Sandbox:
    """A started pool of workers, reusable across calls: `with Sandbox() as box: box.run(...)`."""

    def __init__(self, config=SandboxConfig(), workers=None):
        self.config = config
        self.workers = [_WorkerProcess(config, slot) for slot in range(workers or os.cpu_count() or 1)]
        for worker in self.workers:
            worker.hello()

    @property
    def isolated(self):
        return all(worker.isolated for worker in self.workers)

    def run(self, programs, tests, progress=None):
        """One ProgramResult per program, in input order. `tests` is one UnitTests per
        program, or a single UnitTests shared by all of them."""
        programs = list(programs)
        if isinstance(tests, UnitTests):
            tests = [tests] * len(programs)
        tests = list(tests)
        if len(tests) != len(programs):
            raise ValueError(f"{len(programs)} programs but {len(tests)} test suites")
        for i, (program, suite) in enumerate(zip(programs, tests)):
            if not isinstance(program, str) or not isinstance(suite, UnitTests):
                raise TypeError(f"program {i}: expected str and UnitTests, "
                                f"got {type(program).__name__} and {type(suite).__name__}")
        results = [None] * len(programs)
        bar = self._progress_bar(len(programs), progress)
        pending = deque(range(len(programs)))
        selector = selectors.DefaultSelector()
        for worker in self.workers:
            selector.register(worker.fd, selectors.EVENT_READ, worker)
        try:
            while pending or any(w.job is not None for w in self.workers):
                for slot, worker in enumerate(self.workers):
                    if worker.job is None and pending:
                        job = pending.popleft()
                        try:
                            worker.job, worker.deadline = job, time.monotonic() + self.config.timeout + GRACE_SECONDS
                            worker.send({"timeout": self.config.timeout, "runs": worker_runs(programs[job], tests[job])})
                        except WorkerDied:   # died idle: retry the program on a fresh worker
                            worker.job = None
                            pending.appendleft(job)
                            self._replace(slot, selector)
                for key, _ in selector.select(timeout=1.0):
                    worker = key.data
                    job, worker.job = worker.job, None
                    try:
                        results[job] = self._judge(tests[job], worker.receive()["runs"])
                    except WorkerDied as error:
                        results[job] = _harness_error(tests[job], str(error))
                        self._replace(self.workers.index(worker), selector)
                    bar.update(1)
                for slot, worker in enumerate(self.workers):
                    if worker.job is not None and time.monotonic() > worker.deadline:
                        results[worker.job] = _harness_error(tests[worker.job], "the sandbox worker stopped answering")
                        self._replace(slot, selector)
                        bar.update(1)
        finally:
            selector.close()
            bar.close()
        return results

    @staticmethod
    def _judge(tests, reports):
        try:
            return judge(tests, reports)
        except Exception as error:          # one broken result must not take the others down
            return _harness_error(tests, f"judging failed: {error!r}")

    def _replace(self, slot, selector):
        """Restarts a dead or stuck worker in its slot."""
        worker = self.workers[slot]
        selector.unregister(worker.fd)
        worker.process.kill()
        worker.close()
        self.workers[slot] = _WorkerProcess(self.config, slot)
        self.workers[slot].hello()
        selector.register(self.workers[slot].fd, selectors.EVENT_READ, self.workers[slot])

    def _progress_bar(self, total, progress):
        if progress is None:
            progress = total >= PROGRESS_THRESHOLD
        if not progress:
            return _NoProgress()
        from tqdm import tqdm            # only the evaluator's process ever shows a bar
        return tqdm(total=total, desc="sandbox", unit="program")

    def close(self):
        for worker in self.workers:
            worker.close()
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def _harness_error(tests, message):
    return ProgramResult(outcome="runtime_error", tests=[TestResult("not_run") for _ in tests.cases],
                         error_type="HarnessError", message=message)
