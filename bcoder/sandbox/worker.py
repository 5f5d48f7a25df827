"""Sandbox worker: a small process that forks one process per program run and watches it.

The pool starts it as `python -I -S -c '<import this, main()>' '<config json>' <socket fd>`.
It imports a few standard modules only and starts no threads: every program's process is a
fork of it, so its size is the cost of each fork, and a multi-threaded parent could leave a
child holding another thread's lock.

This process never holds a test, nor a byte of any program: not its source, its stdin inputs or
its output. Those travel as file descriptors (memfds) that only the program's process and the pool
read, so a program, forked from here, starts from a state that never held another program's source
or inputs, nor what another program wrote. In a call run the judge (judge.py, its own process)
holds the tests, and the worker only passes the program its two ends of the judge's channel.
Protocol on the socket, each message a 4-byte big-endian length and its body:

  hello    worker -> pool   {"isolated": bool, "pids_scrambled": bool, "tmp": path} (UTF-8 JSON)
  request  pool -> worker   struct "<ddBIQI" (REQUEST): timeout (CPU s), wall (s), apps, the number of
                            inputs (0: a call run), the source's length in bytes, the length of the
                            names; then each input's length ("<Q"), then the names the tests take from
                            the program (UTF-8, NUL between two), with the fds [source] + ([inputs] for
                            a standard-input run, the inputs one after the other; else the program's
                            ends [status, calls] of the judge's channel); the pool seals them: nobody
                            writes to them
  reply    worker -> pool   {"runs": [report, ...]} (UTF-8 JSON), then each run's stdout, stderr (and,
                            for a standard-input run, status lines) as raw bytes of the sizes in its
                            report: sent from the memfds by sendfile, never read here

Once started, this process runs Python only in its programs' processes: the loop that takes a request,
forks, watches and replies is C (_process.serve, csrc/sandbox_process.c), since every page Python
would write between two forks costs the worker a page fault. A call run is one program process
answering the judge until the judge closes the channel; a standard-input run is one program process
per input, stopping at the first that does not end cleanly. A report says how the program's process
ended: status ok | timeout (past the wall-clock limit, stopped by its RLIMIT_CPU, or its processes
together past the run's CPU time) | crash, error_type, message, seconds, memory, sizes [bytes sent of
each output], seen [bytes written]; the pool completes it (read_report).
"""
import functools
import gc
import json
import os
import resource
import signal
import socket
import struct
import sys

from bcoder.sandbox import messages, program
from bcoder.sandbox.isolation import (
    CAP_CHECKPOINT_RESTORE,
    PR_SET_CHILD_SUBREAPER,
    ROOT_PREFIX,
    WORK_DIR,
    PidCounter,
    become,
    in_scratch,
    install_seccomp,
    interpreter_paths,
    isolate,
    lock_privileges,
    new_directory,
    not_dumpable,
    pid_namespace_init,
    prctl,
    remove_tree,
    seccomp_filter,
    serve_file_systems,
)

try:
    from bcoder.sandbox import _process
except ImportError as error:
    raise ImportError("the sandbox's native extension bcoder.sandbox._process is not built; install with "
                      "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)") from error

REQUEST = struct.Struct("<ddBIQI")   # the fixed part of a request (above)

# Imported once here so that programs do not pay for them after each fork: the small modules
# programs use most (HumanEval prompts import typing). Each megabyte here costs every fork.
PRELOADED = ("array", "bisect", "collections", "copy", "functools", "heapq", "itertools", "math",
             "operator", "re", "string", "typing")
for _name in PRELOADED:
    __import__(_name)

def arrange_fds(high):
    """In the child: makes fd i refer to high[i] (copies _process.serve made above any fd this writes)
    and closes every other fd."""
    for i in range(len(high)):
        os.dup2(high[i], i)
    os.closerange(len(high), 1 << 20)


class Worker:
    def __init__(self, config, sock_fd):
        self.config = config
        self.uid = config["uid"]          # None: programs run as this process's user (uid 0 of a user namespace)
        self.sock = socket.socket(fileno=sock_fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)               # nothing of the worker's may reach a child's stdout
        os.close(devnull)
        sys.path += config["site_packages"]
        paths = interpreter_paths(config["site_packages"])
        self.root = None
        if config["isolate"]:             # as root: programs run as self.uid; else in a user namespace
            self.root = isolate(paths, user=self.uid is None, per_program=True)
        not_dumpable()                    # (after isolate: it writes its uid map in /proc/self, which this hides)
        self.file_systems = None
        if self.root:                     # programs see no process of another slot or pool, nor the judge, nor
            # the parent left outside, which mounts a fresh tmpfs for each program (this process cannot: the filter)
            self.file_systems = pid_namespace_init(functools.partial(serve_file_systems, self.root, self.uid,
                                                                     in_scratch(paths)))
        # Isolated, this is its programs' init, which receives from them only the signals it handles:
        # Python handles SIGINT, so a program (of the same uid without root) could end it. Each program's
        # process gets Python's handler back (enter_program).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        prctl(PR_SET_CHILD_SUBREAPER, 1, "prctl(PR_SET_CHILD_SUBREAPER)")
        seccomp = seccomp_filter()
        _process.kill_leftovers(self.root is not None)    # of a previous worker in this slot (unisolated)
        if self.root:                     # each program gets a fresh tmpfs there
            self.work = None
            os.environ["HOME"] = os.environ["TMPDIR"] = WORK_DIR
        else:
            self.work = new_directory(ROOT_PREFIX, 0o711)
        program.add_site_builtins()
        self.pids = None                  # set where the machine lets this process set its next pid
        if self.root:
            try:
                self.pids = PidCounter()
            except OSError:               # /proc/sys read-only, as in a container
                pass
            os.chroot(self.root)          # every program's root: it is never outside it, nor is this process
            os.chdir("/")
        # Once, for every program's process, forked from here, to inherit (this process never runs a
        # line of a program's, and it needs no capability from here on unless it is root, to drop each
        # program to its uid): no capability where programs stay uid 0, no new privileges, and the
        # seccomp filter (which can be added to, never taken off).
        try:                              # (without root, the one capability the PID counter needs)
            lock_privileges(self.uid, keep=(CAP_CHECKPOINT_RESTORE,) if self.pids else ())
        except OSError:                   # a kernel before 5.9 has no CAP_CHECKPOINT_RESTORE
            lock_privileges(self.uid)
        if self.pids:
            try:
                _process.scramble_pids(self.pids.fd, self.pids.pid_max)
            except PermissionError:       # a kernel before 5.9, without root
                self.pids = None
        install_seccomp(seccomp)
        self.limits = [(kind, (value, value)) for kind, value in (
            (resource.RLIMIT_AS, config["memory_limit"]), (resource.RLIMIT_NPROC, config["max_processes"]),
            (resource.RLIMIT_FSIZE, config["max_file_size"]), (resource.RLIMIT_NOFILE, config["max_open_files"]),
            (resource.RLIMIT_CORE, 0))]
        program.warm_up()                 # last: what runs after it would leave the child colder
        gc.collect()
        gc.freeze()                       # keeps forked children from copying GC'd pages

    def serve(self):
        messages.send(self.sock, {"isolated": self.root is not None, "pids_scrambled": self.pids is not None,
                                  "tmp": os.path.dirname(self.root) if self.root else self.work})
        started = _process.serve(self.sock.fileno(), self.root is not None, self.file_systems,
                                 self.pids.fd if self.pids else -1, self.pids.pid_max if self.pids else 0,
                                 self.work, self.config["output_limit"])
        if started is not None:           # this is a program's process
            self.run_program(*started)
        if self.work:                     # (the pool removes the root's empty mount point)
            remove_tree(self.work)

    def run_program(self, cpu, high, source, length, apps, stdio, names, workdir):
        """The program's process (_process.serve forked it): reads the program's source from its memfd,
        takes its fds and limits, runs it and exits."""
        code = 1
        try:
            text = program.read_source(source, length)
            arrange_fds(high)
            if workdir:                   # unisolated: its own work directory
                os.environ["HOME"] = os.environ["TMPDIR"] = workdir
            self.enter_program(workdir, cpu)
            code = program.program_main(text, apps, stdio, names)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
            os._exit(code)

    def enter_program(self, workdir, cpu):
        """In the child, before the program: what is not inherited from this process. (Each object
        made here costs the child page copies: the limits are built before the fork.)"""
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for kind, value in self.limits:
            resource.setrlimit(kind, value)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        os.chdir(workdir or WORK_DIR)
        become(self.uid, inherited=self.root is not None)


def read_report(report, receive):
    """In the pool: completes a worker's report with the outputs that follow the reply
    (receive(n) -> the next n bytes): stdout, stderr, stdout_overflow and, for a standard-input
    run, what its status lines say (compile_error, program_error)."""
    data = [receive(size) for size in report.pop("sizes")]
    seen = report.pop("seen")
    report.update(stdout=data[0].decode(errors="replace"), stderr=data[1].decode(errors="replace"),
                  stdout_overflow=seen[0] > len(data[0]))
    if len(data) > 2:                     # a standard-input run: the harness's status lines
        lines = [_message(line) for line in data[2].decode(errors="replace").splitlines()]
        if lines and lines[0] and lines[0][0] == "compile_error":   # written before the program ran
            report.update(status="compile_error", error_type=lines[0][1], message=lines[0][2])
        else:
            error = next((m for m in lines[1:] if m and m[0] == "program_error"), None)
            if error:                     # the program could forge one: it only lowers its reward
                report.update(status="program_error", error_type=error[1], message=error[2])
    return report


def _message(line):
    """A status line [kind, type, message] as strings, or None for anything else."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):   # the program writes these lines as it likes: "[[[[..."
        return None
    if not isinstance(message, list) or len(message) != 3:
        return None
    return [str(field) for field in message]


def main():
    Worker(json.loads(sys.argv[1]), int(sys.argv[2])).serve()
