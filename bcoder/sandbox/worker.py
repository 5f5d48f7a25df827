"""Sandbox worker: a light process that forks one child per program run and reports on it.

The pool starts it as `python -I worker.py '<config json>'`. It imports the standard
library only and starts no threads: every child is a fork of this process, so a heavy
or multi-threaded parent would make each fork slow, break the memory limit and could
leave a child holding another thread's lock.

Protocol on stdin/stdout, each message a 4-byte big-endian length and UTF-8 JSON:
  hello    worker -> pool   {"isolated": bool}
  request  pool -> worker   {"timeout": s, "runs": [run, ...]}
  reply    worker -> pool   {"runs": [report, ...]}      (stops after the first run not "ok")
A run is {"source", "setup", "probes", "stdin" (str or null), "apps" (bool)}; a probe is
["exec", code] | ["eval", expr] | ["call", fn_name, args]. The child reports on fd 3, one
JSON list per line: ["compile_error"|"program_error", type, message], ["probe", i, result],
["done"]. The worker, not the program, turns these and the exit status into a report; a
run missing "done" never counts as finished.
"""
import ast
import ctypes
import gc
import json
import os
import random
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import types

# Imported once here so that programs do not pay for them after each fork.
PRELOADED = ("array", "bisect", "collections", "copy", "datetime", "decimal", "fractions",
             "functools", "hashlib", "heapq", "itertools", "math", "operator", "re",
             "statistics", "string", "typing")
for _name in PRELOADED:
    __import__(_name)

# The imports the official APPS harness puts before every program (testing_util.py);
# `np` is added only for programs that mention it, since numpy is slow to import.
APPS_PREAMBLE = """\
import sys, time, itertools, collections, math, fractions, random, heapq
from itertools import accumulate, product, permutations, combinations
from collections import Counter, OrderedDict, deque, defaultdict, ChainMap
from functools import lru_cache
from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2
from typing import List, Tuple
from heapq import *
"""

RESULT_FD = 3
RESULT_LIMIT = 64 << 20      # bytes a child may send on the result channel
MAX_NODES = 200_000          # objects an encoded value may contain
MAX_DEPTH = 100
MESSAGE_LIMIT = 2000         # characters kept of an exception message

# Captured before any program runs: a program may rebind the builtins, not these names.
_type, _isinstance, _len, _AssertionError = type, isinstance, len, AssertionError


# ---------------------------------------------------------------- values
class Opaque:
    """Stands for an object that is not plain data: it equals nothing but itself."""

    def __init__(self, type_name):
        self.type_name = type_name

    def __repr__(self):
        return f"<{self.type_name} object>"

    def __bool__(self):
        raise TypeError(f"a {self.type_name} object has no trusted truth value")


def encode(value):
    """Plain-data JSON for a value, read through the builtin base types only.

    No method the program could override is called, so an object whose `__eq__` always
    returns True encodes as ["object", type name] and equals nothing.
    """
    budget = [MAX_NODES]

    def enc(v, depth):
        budget[0] -= 1
        t = _type(v)
        if v is None or t is bool or t is str or t is float:
            return v
        if t is int:
            return v if v.bit_length() < 10_000 else ["int", hex(v)]
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise ValueError("value too large or too deeply nested to compare")
        if t.__module__ == "numpy" and hasattr(v, "tolist"):
            return enc(v.tolist(), depth + 1)
        if _isinstance(v, bool):
            return bool(int.__int__(v))
        if _isinstance(v, int):
            return enc(int.__int__(v), depth)
        if _isinstance(v, float):
            return float.__float__(v)
        if _isinstance(v, str):
            return str.__str__(v)
        if _isinstance(v, complex):
            return ["complex", complex.real.__get__(v), complex.imag.__get__(v)]
        if _isinstance(v, (bytes, bytearray)):
            return ["bytearray" if _isinstance(v, bytearray) else "bytes",
                    bytes(memoryview(v)).decode("latin-1")]
        if _isinstance(v, dict):
            return ["dict", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in dict.items(v)]]
        for base in (list, tuple, set, frozenset):
            if _isinstance(v, base):
                return [base.__name__, [enc(x, depth + 1) for x in base.__iter__(v)]]
        return ["object", t.__name__ if _isinstance(t.__name__, str) else "?"]

    return enc(value, 0)


def decode(data):
    """Inverse of `encode`: builtin objects, with Opaque for non-plain objects."""
    if not _isinstance(data, list):
        return data
    tag = data[0]
    if tag == "int":
        return int(data[1], 16)
    if tag == "complex":
        return complex(data[1], data[2])
    if tag in ("bytes", "bytearray"):
        return (bytes if tag == "bytes" else bytearray)(data[1].encode("latin-1"))
    if tag == "dict":
        return {decode(k): decode(v) for k, v in data[1]}
    if tag in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](
            decode(x) for x in data[1])
    return Opaque(str(data[1]))


def plain(value):
    """Plain-data copy of a value; the rewritten test asserts compare these."""
    try:
        return decode(encode(value))
    except ValueError:
        return Opaque(_type(value).__name__)


# ---------------------------------------------------------------- the child
def describe(error):
    """(type name, message with the program line) of an exception, without trusting it."""
    try:
        text = str(error)
    except BaseException:
        text = "<unprintable>"
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (program line {line})" if line else ""
    return _type(error).__name__, (text[:MESSAGE_LIMIT] + where)


def failed_assert(error):
    """True for an AssertionError raised by a test's own assert, not by the program."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return _type(error) is _AssertionError and tb is not None and \
        tb.tb_frame.f_code.co_filename == "<test>"


def compile_program(source, apps):
    try:
        return compile(source, "<program>", "exec")
    except SyntaxError as error:
        if not (apps and "outside function" in str(error.msg)):
            raise
    # The APPS harness runs a program as the body of a function (imports stay at the
    # top), so a top-level `return` ends the program there.
    tree = ast.parse(source, "<program>")
    hoisted = [s for s in tree.body if _isinstance(s, (ast.Import, ast.ImportFrom))]
    body = [s for s in tree.body if s not in hoisted] or [ast.Pass()]
    function = ast.FunctionDef(name="__apps_code__", args=ast.arguments(
        posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=body, decorator_list=[], returns=None, type_comment=None)
    call = ast.Expr(ast.Call(ast.Name("__apps_code__", ast.Load()), [], []))
    tree.body = hoisted + [function, call]
    return compile(ast.fix_missing_locations(tree), "<program>", "exec")


def find_function(namespace, name):
    if callable(namespace.get(name)):
        return namespace[name]
    if "Solution" in namespace:           # LeetCode-style starter code
        return getattr(namespace["Solution"](), name)
    raise NameError(f"the program defines no function {name!r}")


def run_probe(probe, namespace):
    try:
        if probe[0] == "exec":
            exec(compile(probe[1], "<test>", "exec"), namespace)
            return ["ok"]
        if probe[0] == "eval":
            return ["ok", encode(eval(compile(probe[1], "<test>", "eval"), namespace))]
        return ["ok", encode(find_function(namespace, probe[1])(*probe[2]))]
    except BaseException as error:
        return ["failed" if failed_assert(error) else "error", *describe(error)]


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def child_main(run, nonce):
    def send(*message):
        write_all(RESULT_FD, (json.dumps([nonce, *message]) + "\n").encode())

    is_stdio = run["stdin"] is not None
    module = types.ModuleType("__main__" if is_stdio else "__program__")
    sys.modules[module.__name__] = sys.modules["__main__"] = module
    namespace = module.__dict__
    if run["apps"]:
        exec(APPS_PREAMBLE + ("import numpy as np\n" if "np." in run["source"] else ""),
             namespace)
    try:
        code = compile_program(run["source"], run["apps"])
    except BaseException as error:
        return send("compile_error", *describe(error))
    # Test code runs in a copy of the program's globals, so that the program's functions
    # cannot rebind names the tests use (such as __plain__) through globals().
    tests = namespace
    try:
        exec(code, namespace)
        tests = dict(namespace, __plain__=plain)
        if run["setup"]:
            exec(compile(run["setup"], "<test>", "exec"), tests)
    except SystemExit as error:
        # A judge treats sys.exit() after the output as a normal end of a stdin program.
        if not (is_stdio and error.code in (None, 0)):
            return send("program_error", "SystemExit", f"exit code {error.code!r}")
    except BaseException as error:
        return send("program_error", *describe(error))
    for index, probe in enumerate(run["probes"]):
        send("probe", index, run_probe(probe, tests))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass                          # the program closed or replaced it
    send("done")


# ---------------------------------------------------------------- the worker
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 2, 4, 4096, 8192, 16384, 1 << 18
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def isolate():
    """Own network namespace (no interface up, not even loopback) and private temp dirs."""
    check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for path in PRIVATE_DIRS:
        if os.path.isdir(path):
            mount_tmpfs(path, b"size=256m,mode=1777")
    expose_interpreter()


def mount_tmpfs(path, options):
    check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"mount tmpfs {path}")


def closed_ancestor(path):
    """The first directory on the way to `path` that other users may not enter, or None."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if os.path.isdir(current) and not os.stat(current).st_mode & 0o001:
            return current
    return None


def expose_interpreter():
    """Lets the programs' uid read this interpreter's files when they sit under a directory
    it may not enter (say /root/.pyenv): a tmpfs hides that directory, and the interpreter's
    directories are bind-mounted back into it."""
    needed = sorted({os.path.realpath(p) for p in [sys.base_prefix, sys.prefix, *sys.path] if os.path.isdir(p)})
    needed = [p for i, p in enumerate(needed) if not any(p.startswith(q + "/") for q in needed[:i])]
    hidden = {}
    for path in needed:
        if (ancestor := closed_ancestor(path)) is not None:
            hidden.setdefault(ancestor, []).append(path)
    for ancestor, paths in hidden.items():
        staged = []
        for path in paths:
            staged.append(tempfile.mkdtemp(prefix="bcoder-expose-"))
            check(libc.mount(path.encode(), staged[-1].encode(), None, MS_BIND | MS_REC, None), f"bind {path}")
        mount_tmpfs(ancestor, b"mode=0755")
        for path, stage in zip(paths, staged):
            os.makedirs(path, mode=0o755, exist_ok=True)
            check(libc.mount(stage.encode(), path.encode(), None, MS_MOVE, None), f"move mount to {path}")
            os.rmdir(stage)


class Worker:
    def __init__(self, config):
        self.config = config
        self.uid = config["uid"]          # None: programs run as this process's user
        self.requests = os.dup(0)
        self.replies = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)               # nothing of the worker's may reach a child's stdout
        os.close(devnull)
        self.isolated = False
        if self.uid is not None:
            isolate()
            self.isolated = True
        check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.kill_leftovers()             # of a previous worker in this slot
        self.tmp = tempfile.mkdtemp(prefix="bcoder-sandbox-")
        os.chmod(self.tmp, 0o711)         # the slot's uid may enter its own work dirs only
        gc.collect()
        gc.freeze()                       # keeps forked children from copying GC'd pages

    # -- messages
    def read_message(self):
        header = self.read_exactly(4)
        return None if header is None else json.loads(self.read_exactly(struct.unpack(">I", header)[0]))

    def read_exactly(self, size):
        data = b""
        while len(data) < size:
            chunk = os.read(self.requests, size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def send_message(self, message):
        data = json.dumps(message).encode()
        write_all(self.replies, struct.pack(">I", len(data)) + data)

    def serve(self):
        self.send_message({"isolated": self.isolated, "tmp": self.tmp})
        while (request := self.read_message()) is not None:
            deadline = time.monotonic() + request["timeout"]
            reports = []
            for run in request["runs"]:
                reports.append(self.execute(run, deadline))
                if reports[-1]["status"] != "ok":
                    break
            self.send_message({"runs": reports})
        remove(self.tmp)

    # -- one run
    def execute(self, run, deadline):
        workdir = tempfile.mkdtemp(dir=self.tmp)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        if run["stdin"] is None:
            stdin = os.open(os.devnull, os.O_RDONLY)
        else:
            stdin = os.memfd_create("stdin")
            write_all(stdin, run["stdin"].encode())
            os.lseek(stdin, 0, os.SEEK_SET)
        pipes = [os.pipe() for _ in range(3)]    # stdout, stderr, results
        nonce = os.urandom(16).hex()             # lines without it were not written by the harness
        started = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                self.enter_child(workdir, stdin, [w for _, w in pipes], deadline - started)
                child_main(run, nonce)
            finally:
                os._exit(0)
        os.close(stdin)
        for _, w in pipes:
            os.close(w)
        try:
            return self.watch(pid, [r for r, _ in pipes], started, deadline, nonce)
        finally:
            for r, _ in pipes:
                os.close(r)
            self.clean_files(workdir)

    def enter_child(self, workdir, stdin, writers, seconds):
        os.setsid()
        for fd, target in zip([stdin] + writers, (0, 1, 2, RESULT_FD)):
            os.dup2(fd, target)
        os.closerange(RESULT_FD + 1, 1 << 20)
        cpu = int(seconds) + 1
        limits = {resource.RLIMIT_AS: self.config["memory_limit"],
                  resource.RLIMIT_CPU: (cpu, cpu + 1),
                  resource.RLIMIT_NPROC: self.config["max_processes"],
                  resource.RLIMIT_FSIZE: self.config["max_file_size"],
                  resource.RLIMIT_NOFILE: self.config["max_open_files"],
                  resource.RLIMIT_CORE: 0}
        for kind, limit in limits.items():
            resource.setrlimit(kind, limit if _isinstance(limit, tuple) else (limit, limit))
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        random.seed()                     # else every child draws the worker's numbers

    def watch(self, pid, readers, started, deadline, nonce):
        """Collects output until the child exits or the deadline passes, then cleans up."""
        pidfd = os.pidfd_open(pid)
        limits = [self.config["output_limit"]] * 2 + [RESULT_LIMIT]
        kept, seen = [bytearray() for _ in readers], [0] * len(readers)
        open_fds, timed_out = list(readers), False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select(open_fds + [pidfd], [], [], left)
                if pidfd in ready:
                    break
                self.read_ready(ready, readers, open_fds, kept, seen, limits)
        finally:
            os.close(pidfd)
        if timed_out:
            os.killpg(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        seconds = time.monotonic() - started
        self.kill_leftovers(pid)
        while open_fds:                   # every writer is dead now: read to end of file
            self.read_ready(open_fds, readers, open_fds, kept, seen, limits)
        return self.report(status, usage, timed_out, seconds, kept, seen, nonce)

    @staticmethod
    def read_ready(ready, readers, open_fds, kept, seen, limits):
        for fd in list(ready):
            i = readers.index(fd)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.remove(fd)
            seen[i] += len(chunk)
            kept[i] += chunk[:max(0, limits[i] - len(kept[i]))]

    def report(self, status, usage, timed_out, seconds, kept, seen, nonce):
        cpu_seconds = usage.ru_utime + usage.ru_stime
        report = {"status": "ok", "error_type": "", "message": "", "probes": [],
                  "stdout": kept[0].decode(errors="replace"), "stderr": kept[1].decode(errors="replace"),
                  "stdout_overflow": seen[0] > len(kept[0]),
                  "seconds": round(seconds, 4), "memory": usage.ru_maxrss * 1024}
        done = False
        if seen[2] <= RESULT_LIMIT:
            for line in kept[2].decode(errors="replace").splitlines():
                try:
                    signed, kind, *message = json.loads(line)
                except (ValueError, TypeError):
                    continue
                if signed != nonce:
                    continue                      # written by the program, not the harness
                if kind == "done":
                    done = True
                elif kind == "probe":
                    report["probes"].append(message[1])
                elif kind in ("compile_error", "program_error"):
                    report.update(status=kind, error_type=message[0], message=message[1])
                    done = True
        if report["status"] != "ok" and done:
            return report
        if timed_out or (os.WIFSIGNALED(status) and (os.WTERMSIG(status) == signal.SIGXCPU or (
                os.WTERMSIG(status) == signal.SIGKILL and cpu_seconds >= int(seconds) + 1))):
            report.update(status="timeout", error_type="Timeout", message="time limit exceeded")
        elif os.WIFSIGNALED(status):
            name = signal.Signals(os.WTERMSIG(status)).name
            report.update(status="crash", error_type=name, message=f"killed by {name}")
        elif not done:
            report.update(status="crash", error_type="ProgramExited",
                          message=f"exited with code {os.WEXITSTATUS(status)} before the tests finished")
        return report

    # -- cleanup
    def kill_leftovers(self, pid=None):
        """Kills and reaps every process the program started, daemons included.

        This worker is a child subreaper, so each orphan is re-parented to it: once no
        child is left, no descendant is left. While some are, root kills by the slot's uid
        (one kill(-1) reaches them in any session); otherwise each child is killed in turn.
        """
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                child, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if child == 0:
                self.kill_uid() if self.uid is not None else self.kill_children()
                time.sleep(0.0005)

    def kill_uid(self):
        killer = os.fork()
        if killer == 0:
            try:
                os.setresuid(self.uid, self.uid, self.uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(killer, 0)

    @staticmethod
    def kill_children():
        me = os.getpid()
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
                if parent == me:
                    os.kill(int(entry), signal.SIGKILL)
            except (ValueError, OSError, IndexError):
                continue

    def clean_files(self, workdir):
        remove(workdir)
        if self.isolated:                 # the private temp dirs: whatever the program left
            for path in filter(os.path.isdir, PRIVATE_DIRS):
                for entry in os.listdir(path):
                    if os.path.join(path, entry) != self.tmp:
                        remove(os.path.join(path, entry))


def remove(path):
    """Removes a file or tree, even one whose permissions the program took away."""
    def retry(function, failed, _):
        for name in (os.path.dirname(failed), failed):
            try:
                os.chmod(name, 0o700)
            except OSError:
                pass
        try:
            function(failed) if function is not os.scandir else shutil.rmtree(failed)
        except OSError:
            pass

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=retry)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass

if __name__ == "__main__":
    Worker(json.loads(sys.argv[1])).serve()
