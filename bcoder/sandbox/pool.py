"""The pool of sandbox workers: starts them, hands out programs, turns reports into results."""
import ast
import builtins
import dataclasses
import glob
import json
import logging
import os
import platform
import random
import selectors
import site
import socket
import stat
import struct
import subprocess
import sys
import time
import warnings
from collections import deque
from pathlib import Path

from tqdm import tqdm

from bcoder.sandbox import messages
from bcoder.sandbox.answers import output_matches
from bcoder.sandbox.isolation import ROOT_PREFIX, remove_tree, user_namespaces
from bcoder.sandbox.schema import (
    WALL_FACTOR,
    AssertTest,
    ProgramResult,
    SandboxConfig,
    StdioTest,
    TestResult,
    UnitTests,
    ValueTest,
)
from bcoder.sandbox.values import encode
from bcoder.sandbox.worker import REQUEST, read_report

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])     # the directory holding `bcoder`
GRACE_SECONDS = 30        # a worker silent this long past a run's wall-clock limit is stuck
JUDGE_GRACE = 2           # a judge silent this long past it is stalled by the program's answers
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
        self.reader = messages.Reader(self.sock)
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
            message = self.reader.receive()       # (a worker or judge passes no file descriptors)
        except OSError:
            message = None
        if message is None:
            raise SlotDied(f"sandbox process {self.process.pid} died (exit status {self.process.wait()})")
        return message

    def receive_bytes(self, count):
        try:
            return self.reader.receive_bytes(count)
        except (OSError, EOFError):
            raise SlotDied(f"sandbox process {self.process.pid} died (exit status {self.process.wait()})") from None

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
            remove_tree(self.tmp)


class _Slot:
    """A worker (forks the programs) and a judge (runs the tests): at most one program in flight."""

    def __init__(self, config, index):
        isolate, root = config.isolate is not False, os.geteuid() == 0
        settings = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
        settings.update(isolate=isolate, uid=config.uid_base + index if isolate and root else None,
                        judge_uid=config.uid_base + JUDGE_UID_OFFSET + index if isolate and root else None,
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
        end = time.monotonic() + WALL_FACTOR * timeout         # the run's wall-clock limit (worker.py)
        self.deadline, self.judge_deadline = end + GRACE_SECONDS, end + JUDGE_GRACE
        # The source and inputs go to the program's process as sealed memfds: the worker, which
        # every program is forked from, never holds a byte of them (worker.py), only their sizes.
        data = program.encode(errors="surrogatepass")
        source = messages.sealed(data)
        if isinstance(suite.cases[0], StdioTest):
            inputs = [case.input.encode(errors="surrogatepass") for case in suite.cases]
            self.waiting = {"worker"}
            fds = [source, messages.sealed(b"".join(inputs))]
            try:
                return self.worker.send(worker_request(timeout, suite.apps, len(data), inputs=[len(i) for i in inputs]),
                                        fds)
            finally:
                for fd in fds:
                    os.close(fd)
        calls, status = os.pipe(), os.pipe()
        try:
            self.waiting = {"worker", "judge"}
            self.judge.send(spec["encoded"], [calls[1], status[0]])
            self.worker.send(worker_request(timeout, suite.apps, len(data), names=spec["names"]),
                             [source, status[1], calls[0]])
        finally:
            for fd in calls + status + (source,):
                os.close(fd)

    def receive(self, role):
        """Takes a reply; True once the job has all of its replies."""
        self.replies[role] = getattr(self, role).receive()
        if role == "worker":                       # the outputs follow the reply
            self.replies[role]["runs"] = [read_report(report, self.worker.receive_bytes)
                                          for report in self.replies[role]["runs"]]
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
        if config.isolate is not False and platform.machine() != "x86_64":
            raise OSError(f"the sandbox's seccomp filter knows x86_64 only, not {platform.machine()}: pass "
                          f"SandboxConfig(isolate=False) to run programs unisolated")
        if config.isolate is not False and os.geteuid() != 0 and (why := user_namespaces()):
            raise OSError(f"the sandbox isolates programs without root in user namespaces, which this machine "
                          f"refuses ({why}): allow them (sysctl kernel.unprivileged_userns_clone=1 and "
                          f"user.max_user_namespaces > 0; in a container, a seccomp profile that permits unshare), "
                          f"run as root, or pass SandboxConfig(isolate=False) to run programs unisolated")
        remove_stale_directories()
        try:
            for index in range(workers or os.cpu_count() or 1):
                self.slots.append(_Slot(config, index))
        except BaseException:
            self.close()
            raise
        if not self.isolated:
            warnings.warn("SandboxConfig(isolate=False): the sandbox runs programs unisolated, as your user: a program "
                          "can read your files, the tests among them, and forge its reward; never use this for RL",
                          SandboxWarning, stacklevel=2)
        elif not all(slot.worker.hello["pids_scrambled"] for slot in self.slots):
            warnings.warn("the sandbox cannot set its PID namespaces' next pid here (/proc/sys is read-only, as in a "
                          "container, or the kernel is older than 5.9 and this is not root): a program can tell the "
                          "next one a number through the pids it takes", SandboxWarning, stacklevel=2)

    @property
    def isolated(self):
        return all(slot.isolated for slot in self.slots)

    def run(self, programs, tests, progress=None):
        """One ProgramResult per program, in input order (they run in a random one). `tests` is one UnitTests per
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
                specs[id(suite)] = {"names": spec["names"], "encoded": json.dumps(dict(
                    spec, timeout=self.config.timeout, answers=self.config.answers)).encode()}
        results = [None] * len(programs)
        bar = self._progress_bar(len(programs), progress)
        # In an order nobody can predict: which program runs after which on a slot is then no program's to
        # know, and what one leaves in the channels no sandbox closes (time, the kernel's counters) reaches
        # a stranger's program, most often another problem's.
        order = list(range(len(programs)))
        random.SystemRandom().shuffle(order)
        pending = deque(order)
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
                        results[job] = _result(tests[job], slot.replies, self.config.answers)
                    except SlotDied as error:
                        results[job] = _harness_error(tests[job], str(error))
                        self._replace(self.slots.index(slot), selector)
                    bar.update(1)
                for index, slot in enumerate(self.slots):
                    if slot.job is None:
                        continue
                    if "judge" in slot.waiting and time.monotonic() > slot.judge_deadline:
                        results[slot.job] = _judge_stalled(tests[slot.job])
                    elif time.monotonic() > slot.deadline:
                        results[slot.job] = _harness_error(tests[slot.job], "the sandbox stopped answering")
                    else:
                        continue
                    self._replace(index, selector)
                    bar.update(1)
        finally:
            selector.close()
            bar.close()
            for index, slot in enumerate(self.slots):
                if slot.job is not None:  # left mid-run (an exception, Ctrl-C): its replies were not all read
                    slot.close(kill=True)
                    self.slots[index] = _Slot(self.config, index)
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
    """Removes the work directories and roots' mount points that workers and judges of a killed pool
    left behind (named after the process that made them; kept while it lives), whatever is in them.
    Anything else by that name is skipped and logged, never followed: a symbolic link, a file, or a
    directory of another user (any local user can make one in /tmp). Nothing here raises."""
    for path in glob.glob(ROOT_PREFIX + "*"):
        pid = path[len(ROOT_PREFIX):].split("-")[0]
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue                               # its pool lives
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            logging.getLogger(__name__).warning("skipping %s: not a directory of this user's sandbox", path)
        else:
            remove_tree(path)


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


def worker_request(timeout, apps, source_length, inputs=(), names=()):
    """A request to a worker (worker.py): a call run, or a standard-input run with `inputs` (their lengths)."""
    encoded = "\0".join(names).encode()            # identifiers (UnitTests): none holds a NUL
    return REQUEST.pack(timeout, WALL_FACTOR * timeout, apps, len(inputs), source_length, len(encoded)) + \
        struct.pack(f"<{len(inputs)}Q", *inputs) + encoded


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


def _result(suite, replies, answers):
    try:
        return program_result(suite, replies["worker"]["runs"], replies.get("judge", {}).get("verdicts", []), answers)
    except Exception as error:          # one broken result must not take the others down
        return _harness_error(suite, f"judging failed: {error!r}")


def program_result(suite, reports, verdicts, answers):
    """ProgramResult of one program from the worker's reports (how its processes ended, what they
    wrote) and the judge's verdicts (call runs), stdout compared under the answer policy `answers`.
    Passed only if every test passed."""
    last = reports[-1]
    result = ProgramResult(outcome="passed", seconds=sum(r["seconds"] for r in reports),
                           peak_memory=max(r["memory"] for r in reports),
                           stdout=last["stdout"], stderr=last["stderr"])
    if isinstance(suite.cases[0], StdioTest):
        if last["status"] in ("compile_error", "program_error"):
            result.outcome = "compile_error" if last["status"] == "compile_error" else "runtime_error"
            result.error_type, result.message = last["error_type"], last["message"]
        result.tests = [_stdio_test_result(case, reports[i], answers) if i < len(reports) else TestResult("not_run")
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
    run ended (timeout, crash), the rest are not run, as are those after a test that timed out. A run
    that timed out after the judge's last verdict (CPU time over the limit) fails its last test."""
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
            ended = test.status == "timeout"
    if not ended and report["status"] == "timeout":
        # Every test has its verdict, but the program's processes together used more CPU time than
        # the limit (counted once they were gone): the last test is where its time ran out.
        out[-1] = _run_failure(report)
    return out


def _run_failure(report):
    """TestResult for the test a call run ended at: how the program's process ended."""
    if report["status"] in ("timeout", "crash"):
        return TestResult("timeout" if report["status"] == "timeout" else "error", report["error_type"],
                          report["message"])
    return TestResult("error", "ProgramExited", "the program's process ended before the tests finished")


def _stdio_test_result(case, report, answers):
    if report["status"] != "ok":
        if report["status"] == "timeout":
            return TestResult("timeout", report["error_type"], report["message"])
        return TestResult("error", report["error_type"], report["message"])
    if report["stdout_overflow"]:
        return TestResult("error", "OutputLimitExceeded", "the program wrote more output than the limit")
    if output_matches(answers, report["stdout"], case.output):
        return TestResult("passed")
    expected, got = case.output[:SHOWN], report["stdout"][:SHOWN]
    return TestResult("failed", "WrongAnswer", f"expected {expected!r}, got {got!r}")


def _judge_stalled(tests):
    """The result of a program whose tests the judge did not finish by the run's deadline: the test
    code stalled on the program's answers where no timer of the judge's interrupts it (in C code, as
    a set of ints that all hash alike). The program's doing: every test is a timeout."""
    message = "the tests did not finish within the time limit"
    timed_out = [TestResult("timeout", "Timeout", message) for _ in tests.cases]
    return ProgramResult(outcome="runtime_error", tests=timed_out, error_type="Timeout", message=message)


def _harness_error(tests, message):
    return ProgramResult(outcome="runtime_error", tests=[TestResult("not_run") for _ in tests.cases],
                         error_type="HarnessError", message=message)
