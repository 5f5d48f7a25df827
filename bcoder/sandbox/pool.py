"""The pool of sandbox workers: starts them, hands out programs, turns reports into results."""
import ast
import builtins
import dataclasses
import glob
import json
import os
import selectors
import shutil
import site
import socket
import subprocess
import sys
import time
import warnings
from collections import deque
from pathlib import Path

from tqdm import tqdm

from bcoder.sandbox import messages
from bcoder.sandbox.isolation import ROOT_PREFIX
from bcoder.sandbox.judge import apps_output_matches
from bcoder.sandbox.schema import (AssertTest, ProgramResult, SandboxConfig, StdioTest, TestResult,
                                   UnitTests, ValueTest)
from bcoder.sandbox.values import encode

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])     # the directory holding `bcoder`
GRACE_SECONDS = 30        # a slot silent this long past a program's timeout is stuck
PROGRESS_THRESHOLD = 200  # programs in a call before a progress bar shows by default
JUDGE_UID_OFFSET = 32768  # slot i's judge runs as uid_base + JUDGE_UID_OFFSET + i (root only)
SHOWN = 300               # characters of a value shown in a failure message
# Standard modules a test may use by name without importing them (as `math.isclose`, as it could
# when it ran after the program), except those whose import has side effects.
MODULE_DENYLIST = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc", "webbrowser"}


class SlotDied(RuntimeError):
    pass


class SandboxWarning(UserWarning):
    pass


class _Process:
    """A slot's worker or judge process (role: the module whose main() it runs), and its socket."""

    def __init__(self, role, settings):
        # -I -S: no site, whose .pth files import modules that every fork of the worker would copy.
        boot = f"import sys; sys.path.insert(0, {PACKAGE_ROOT!r}); from bcoder.sandbox.{role} import main; main()"
        # A minimal environment: the caller's variables (tokens, paths) stay out of programs.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        self.sock, theirs = socket.socketpair()
        self.process = subprocess.Popen([sys.executable, "-I", "-S", "-c", boot, json.dumps(settings),
                                         str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        theirs.close()
        self.tmp = None
        self.hello = self.receive()
        self.tmp = self.hello.get("tmp")

    def send(self, message, fds=()):
        try:
            messages.send(self.sock, message, fds)
        except OSError as error:
            raise SlotDied(f"sandbox process {self.process.pid} died: {error}") from error

    def receive(self):
        try:
            message, fds = messages.receive(self.sock)
        except OSError:
            message, fds = None, []
        for fd in fds:                             # none expected from a worker or judge
            os.close(fd)
        if message is None:
            raise SlotDied(f"sandbox process {self.process.pid} died (exit status {self.process.wait()})")
        return message

    def close(self, kill=False):
        try:
            if kill:
                self.process.kill()
            self.sock.shutdown(socket.SHUT_WR)     # end of requests: it cleans up and exits
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.sock.close()
        if self.tmp:                               # its work directory, or its root's empty mount point
            shutil.rmtree(self.tmp, ignore_errors=True)


class _Slot:
    """A worker (forks the programs) and a judge (runs the tests): at most one program in flight."""

    def __init__(self, config, index):
        isolate = config.isolate if config.isolate is not None else os.geteuid() == 0
        if isolate and os.geteuid() != 0:
            raise PermissionError("SandboxConfig(isolate=True) needs root")
        settings = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
        settings.update(uid=config.uid_base + index if isolate else None,
                        judge_uid=config.uid_base + JUDGE_UID_OFFSET + index if isolate else None,
                        site_packages=site.getsitepackages())
        self.worker = self.judge = None
        try:
            self.worker = _Process("worker", settings)
            self.judge = _Process("judge", settings)
        except BaseException:
            self.close(kill=True)
            raise
        self.isolated = self.worker.hello["isolated"]
        self.job, self.replies, self.deadline = None, {}, 0.0

    def start(self, job, program, suite, spec, timeout):
        """Sends a program to the worker and, for a call run, its tests to the judge with their ends
        of a fresh channel; the worker never sees a test."""
        self.job, self.replies = job, {}
        self.deadline = time.monotonic() + timeout + GRACE_SECONDS
        request = {"timeout": timeout, "source": program, "apps": suite.apps, "stdin": None}
        if isinstance(suite.cases[0], StdioTest):
            request["stdin"] = [case.input for case in suite.cases]
            self.waiting = {"worker"}
            return self.worker.send(request)
        request["names"] = spec["names"]
        calls, status = os.pipe(), os.pipe()
        try:
            self.waiting = {"worker", "judge"}
            self.judge.send(spec["encoded"], [calls[1], status[0]])
            self.worker.send(request, [status[1], calls[0]])
        finally:
            for fd in calls + status:
                os.close(fd)

    def receive(self, role):
        """Takes a reply; True once the job has all of its replies."""
        self.replies[role] = getattr(self, role).receive()
        self.waiting.discard(role)
        return not self.waiting

    def close(self, kill=False):
        for process in (self.worker, self.judge):
            if process is not None:
                process.close(kill)


class Sandbox:
    """A started pool of slots, reusable across calls: `with Sandbox() as box: box.run(...)`."""

    def __init__(self, config=SandboxConfig(), workers=None):
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.config = config
        self.slots = []
        remove_stale_directories()
        try:
            for index in range(workers or os.cpu_count() or 1):
                self.slots.append(_Slot(config, index))
        except BaseException:
            self.close()
            raise
        if not self.isolated:
            warnings.warn("the sandbox runs programs as your user (not root): a program can read your files, the "
                          "tests among them, and forge its reward; run as root for untrusted programs",
                          SandboxWarning, stacklevel=2)

    @property
    def isolated(self):
        return all(slot.isolated for slot in self.slots)

    def run(self, programs, tests, progress=None):
        """One ProgramResult per program, in input order. `tests` is one UnitTests per
        program, or a single UnitTests shared by all of them."""
        programs = list(programs)
        if isinstance(tests, UnitTests):
            tests = [tests] * len(programs)
        tests = list(tests)
        if len(tests) != len(programs):
            raise ValueError(f"{len(programs)} programs but {len(tests)} test suites")
        specs = {}                                  # the judge's view of each distinct suite
        for i, (program, suite) in enumerate(zip(programs, tests)):
            if not isinstance(program, str) or not isinstance(suite, UnitTests):
                raise TypeError(f"program {i}: expected str and UnitTests, "
                                f"got {type(program).__name__} and {type(suite).__name__}")
            if not suite.cases:
                raise ValueError(f"program {i}: its UnitTests has no test cases (no program passes no tests)")
            if id(suite) not in specs and not isinstance(suite.cases[0], StdioTest):
                spec = judge_request(suite)
                specs[id(suite)] = {"names": spec["names"],
                                    "encoded": json.dumps(dict(spec, timeout=self.config.timeout)).encode()}
        results = [None] * len(programs)
        bar = self._progress_bar(len(programs), progress)
        pending = deque(range(len(programs)))
        selector = selectors.DefaultSelector()
        for slot in self.slots:
            self._register(selector, slot)
        try:
            while pending or any(slot.job is not None for slot in self.slots):
                for index, slot in enumerate(self.slots):
                    if slot.job is None and pending:
                        job = pending.popleft()
                        try:
                            slot.start(job, programs[job], tests[job], specs.get(id(tests[job])), self.config.timeout)
                        except SlotDied:             # died idle: retry the program on a fresh slot
                            pending.appendleft(job)
                            self._replace(index, selector)
                for key, _ in selector.select(timeout=1.0):
                    slot, role = key.data
                    if slot.job is None or slot not in self.slots:
                        continue
                    job = slot.job
                    try:
                        if not slot.receive(role):
                            continue
                        slot.job = None
                        results[job] = _result(tests[job], slot.replies)
                    except SlotDied as error:
                        results[job] = _harness_error(tests[job], str(error))
                        self._replace(self.slots.index(slot), selector)
                    bar.update(1)
                for index, slot in enumerate(self.slots):
                    if slot.job is not None and time.monotonic() > slot.deadline:
                        results[slot.job] = _harness_error(tests[slot.job], "the sandbox stopped answering")
                        self._replace(index, selector)
                        bar.update(1)
        finally:
            selector.close()
            bar.close()
        return results

    @staticmethod
    def _register(selector, slot):
        selector.register(slot.worker.sock, selectors.EVENT_READ, (slot, "worker"))
        selector.register(slot.judge.sock, selectors.EVENT_READ, (slot, "judge"))

    def _replace(self, index, selector):
        """Restarts a dead or stuck slot (its worker and its judge)."""
        slot = self.slots[index]
        selector.unregister(slot.worker.sock)
        selector.unregister(slot.judge.sock)
        slot.close(kill=True)
        self.slots[index] = _Slot(self.config, index)
        self._register(selector, self.slots[index])

    def _progress_bar(self, total, progress):
        if progress is None:
            progress = total >= PROGRESS_THRESHOLD
        if not progress:
            return _NoProgress()
        return tqdm(total=total, desc="sandbox", unit="program")

    def close(self):
        for slot in self.slots:
            slot.close()
        self.slots = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def remove_stale_directories():
    """The work directories and roots' mount points that workers and judges of a killed pool left behind
    (named after the process that made them; kept while it lives)."""
    for path in glob.glob(ROOT_PREFIX + "*"):
        pid = path[len(ROOT_PREFIX):].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(path, ignore_errors=True)


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def _refuse(value, _):
    raise TypeError(f"a test value must be plain data, got a {type(value).__name__}")


def test_names(suite):
    """The names the tests take from the program: UnitTests.names, or else every name the test code
    reads that is neither a builtin, a standard module nor defined by the setup."""
    if suite.names:
        return list(suite.names)
    code = [suite.setup] + [c.expr if isinstance(c, ValueTest) else c.code for c in suite.cases
                            if isinstance(c, (ValueTest, AssertTest))]
    read = set()
    for tree in map(_parse, code[1:]):
        read |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    setup = _parse(code[0])
    read |= {n.id for n in ast.walk(setup) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    defined = {n.id for n in ast.walk(setup) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)} | \
              {n.name for n in ast.walk(setup) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return sorted(read - defined - set(dir(builtins)) - set(sys.stdlib_module_names))


def _parse(code):
    """The syntax tree of test code; one that does not parse reads no names (the judge reports it)."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return ast.Module(body=[], type_ignores=[])


def judge_request(suite):
    """The tests of a call run as the judge reads them (judge.py)."""
    cases = []
    for case in suite.cases:
        if isinstance(case, ValueTest):
            cases.append(["value", case.expr, encode(case.expected, _refuse)])
        elif isinstance(case, AssertTest):
            cases.append(["assert", case.code])
        else:
            cases.append(["call", case.fn_name, encode(list(case.args), _refuse), encode(case.expected, _refuse)])
    names = test_names(suite)
    code = [suite.setup] + [c.expr if isinstance(c, ValueTest) else c.code for c in suite.cases
                            if isinstance(c, (ValueTest, AssertTest))]
    used = {n.id for tree in map(_parse, code) for n in ast.walk(tree) if isinstance(n, ast.Name)}
    modules = sorted((used & set(sys.stdlib_module_names)) - set(names) - MODULE_DENYLIST)
    return {"setup": suite.setup, "names": names, "modules": modules, "cases": cases}


def _result(suite, replies):
    try:
        return program_result(suite, replies["worker"]["runs"], replies.get("judge", {}).get("verdicts", []))
    except Exception as error:          # one broken result must not take the others down
        return _harness_error(suite, f"judging failed: {error!r}")


def program_result(suite, reports, verdicts):
    """ProgramResult of one program from the worker's reports (how its processes ended, what they
    wrote) and the judge's verdicts (call runs). Passed only if every test passed."""
    last = reports[-1]
    result = ProgramResult(outcome="passed", seconds=sum(r["seconds"] for r in reports),
                           peak_memory=max(r["memory"] for r in reports),
                           stdout=last["stdout"], stderr=last["stderr"])
    if isinstance(suite.cases[0], StdioTest):
        if last["status"] in ("compile_error", "program_error"):
            result.outcome = "compile_error" if last["status"] == "compile_error" else "runtime_error"
            result.error_type, result.message = last["error_type"], last["message"]
        result.tests = [_stdio_test_result(case, reports[i]) if i < len(reports) else TestResult("not_run")
                        for i, case in enumerate(suite.cases)]
    else:
        result.tests = _call_test_results(suite, last, verdicts, result)
    if result.outcome == "passed":
        statuses = [test.status for test in result.tests]
        for status, outcome in (("error", "runtime_error"), ("timeout", "runtime_error"),
                                ("not_run", "runtime_error"), ("failed", "failed")):
            if status in statuses:
                first = result.tests[statuses.index(status)]
                result.outcome, result.error_type, result.message = outcome, first.error_type, first.message
                break
    return result


def _call_test_results(suite, report, verdicts, result):
    """TestResults of a call run from the judge's verdicts; the first test without one gets how the
    run ended (timeout, crash), the rest are not run."""
    tests = {}
    for verdict in verdicts:
        if verdict[0] == "program":
            result.outcome = "compile_error" if verdict[1] == "compile_error" else "runtime_error"
            result.error_type, result.message = verdict[2], verdict[3]
            return [TestResult("not_run") for _ in suite.cases]
        _, index, status, error_type, message = verdict
        tests[index] = TestResult(status, error_type, message)
    out, ended = [], False
    for i in range(len(suite.cases)):
        test = tests.get(i)
        if ended:
            out.append(TestResult("not_run"))
        elif test is None or test.status == "died":
            out.append(_run_failure(report))
            ended = True
        else:
            out.append(test)
    return out


def _run_failure(report):
    """TestResult for the test a call run ended at: how the program's process ended."""
    if report["status"] in ("timeout", "crash"):
        return TestResult("timeout" if report["status"] == "timeout" else "error", report["error_type"],
                          report["message"])
    return TestResult("error", "ProgramExited", "the program's process ended before the tests finished")


def _stdio_test_result(case, report):
    if report["status"] != "ok":
        if report["status"] == "timeout":
            return TestResult("timeout", report["error_type"], report["message"])
        return TestResult("error", report["error_type"], report["message"])
    if report["stdout_overflow"]:
        return TestResult("error", "OutputLimitExceeded", "the program wrote more output than the limit")
    if apps_output_matches(report["stdout"], case.output):
        return TestResult("passed")
    return TestResult("failed", "WrongAnswer",
                      f"expected {case.output[:SHOWN]!r}, got {report['stdout'][:SHOWN]!r}")


def _harness_error(tests, message):
    return ProgramResult(outcome="runtime_error", tests=[TestResult("not_run") for _ in tests.cases],
                         error_type="HarnessError", message=message)
