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
Protocol on the socket, each message a 4-byte big-endian length and UTF-8 JSON:

  hello    worker -> pool   {"isolated": bool, "tmp": path}
  request  pool -> worker   {"timeout": CPU s, "wall": s, "apps": bool, "source": its length in bytes,
                            "stdin": [each input's length in bytes] | null,
                            "names": [the names the tests take from the program]}
                            with the fds [source] + ([inputs] for a standard-input run, the inputs
                            one after the other; else the program's ends [status, calls] of the
                            judge's channel); the pool seals them: nobody writes to them
  reply    worker -> pool   {"runs": [report, ...]}, then each run's stdout, stderr (and, for a
                            standard-input run, status lines) as raw bytes of the sizes in its
                            report: sent from the memfds by sendfile, never read here

A call run is one program process answering the judge until the judge closes the channel; a
standard-input run is one program process per input, stopping at the first that does not
end cleanly. A report says how the program's process ended: status ok | timeout | crash,
error_type, message, seconds, memory, sizes [bytes sent of each output], seen [bytes written];
the pool completes it (read_report).
"""
import fcntl
import functools
import gc
import json
import math
import os
import resource
import select
import signal
import socket
import sys
import time

from bcoder.sandbox import messages, program
from bcoder.sandbox.isolation import (
    CAP_CHECKPOINT_RESTORE,
    DONE,
    PR_SET_CHILD_SUBREAPER,
    READY,
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

# Imported once here so that programs do not pay for them after each fork: the small modules
# programs use most (HumanEval prompts import typing). Each megabyte here costs every fork.
PRELOADED = ("array", "bisect", "collections", "copy", "functools", "heapq", "itertools", "math",
             "operator", "re", "string", "typing")
for _name in PRELOADED:
    __import__(_name)

STATUS_LIMIT = 1 << 20       # bytes of status lines kept from a standard-input run


def children_cpu():
    """CPU seconds of all the processes this worker has reaped: each program's, once it ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def high_copies(fds):
    """Copies of `fds` numbered above any fd a child's arrange_fds writes (so none is overwritten
    before it is copied). Made in the worker: work done before the fork costs a child nothing."""
    return [fcntl.fcntl(fd, fcntl.F_DUPFD, 64 + len(fds)) for fd in fds]


def arrange_fds(high):
    """In the child: makes fd i refer to high[i] and closes every other fd."""
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
        self.kill_leftovers()             # of a previous worker in this slot (without a PID namespace)
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
        if self.root:                     # every program's root: it is never outside it, nor is this process
            os.chroot(self.root)
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
                self.pids.scramble()
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
        while True:
            request, fds = messages.receive(self.sock)
            if request is None:
                break
            deadline = time.monotonic() + request["wall"]
            # The CPU time the program's runs share: all their processes', each counted once it is gone
            # (a process's RLIMIT_CPU counts its own only, and whole seconds).
            cpu_end = children_cpu() + request["timeout"]
            if request["stdin"] is None:
                runs = [self.run(request, deadline, cpu_end, fds[0], None, fds[1:])]
            else:
                runs, offset = [], 0
                for length in request["stdin"]:
                    runs.append(self.run(request, deadline, cpu_end, fds[0], self.input(fds[1], offset, length), []))
                    offset += length
                    if runs[-1][0]["status"] != "ok":
                        break
            for fd in fds:
                os.close(fd)
            messages.send(self.sock, {"runs": [report for report, _ in runs]},
                          files=[(fd, size) for report, outputs in runs for fd, size in zip(outputs, report["sizes"])])
            for _, outputs in runs:
                for fd in outputs:
                    os.close(fd)
        if self.work:                     # (the pool removes the root's empty mount point)
            remove_tree(self.work)

    @staticmethod
    def input(inputs, offset, length):
        """A memfd holding one input, copied by the kernel: its bytes never enter this process."""
        fd = os.memfd_create("stdin")
        while length:
            sent = os.sendfile(fd, inputs, offset, length)
            if sent == 0:
                break
            offset, length = offset + sent, length - sent
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    # -- one run
    def run(self, request, deadline, cpu_end, source, stdin, channel):
        """One program process, reading its source from `source`: a call run's answers the judge
        through `channel` ([status, calls]); a standard-input run's reads the memfd `stdin` and writes
        its status lines to a memfd of its own. Returns (report, [memfds of stdout, stderr, status])."""
        outputs = [os.memfd_create(name) for name in ("stdout", "stderr", "status")[:2 if stdin is None else 3]]
        if stdin is None:
            stdin = os.open(os.devnull, os.O_RDONLY)
        fds = [stdin, *outputs[:2], *(channel or outputs[2:])]
        if self.root and os.read(self.file_systems[1], 1) != READY:     # the parent mounted this program's tmpfs
            raise RuntimeError("no file system for the program: the worker's parent failed")
        started = time.monotonic()
        workdir = None
        if not self.root:
            workdir = f"{self.work}/{os.urandom(8).hex()}"
            os.mkdir(workdir, 0o700)
            # Set here, not in the child: each page a forked child first writes costs it a copy, and
            # os.environ's update touches some eighty.
            os.environ["HOME"] = os.environ["TMPDIR"] = workdir
        high = high_copies(fds)
        cpu = math.ceil(cpu_end - children_cpu())      # RLIMIT_CPU counts whole seconds
        if self.pids:
            self.pids.scramble()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                text = program.read_source(source, request["source"])
                arrange_fds(high)
                self.enter_program(workdir, cpu)
                code = program.program_main(text, request["apps"], len(outputs) == 3, request.get("names", ()))
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except BaseException:
                        pass
                os._exit(code)
        for fd in high + fds[:1]:
            os.close(fd)
        report = self.watch(pid, outputs, started, deadline, cpu, cpu_end)
        if self.root:                     # no process of the program is left: the parent detaches its tmpfs
            os.write(self.file_systems[0], DONE)
        else:
            remove_tree(workdir)
        return report, outputs

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

    def watch(self, pid, outputs, started, deadline, cpu, cpu_end):
        """Waits for the program's process to exit or the deadline to pass; then kills and reaps
        everything it started, so that nothing writes to `outputs` any more. A timeout: past the
        deadline, stopped by the process's RLIMIT_CPU (`cpu` s, SIGXCPU, or SIGKILL a second later for
        one that ignores it), or past `cpu_end` of this process's children's CPU, which counts every
        process of the program once it is reaped (each fork has an RLIMIT_CPU of its own)."""
        pidfd = os.pidfd_open(pid)
        try:
            timed_out = not select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]
        finally:
            os.close(pidfd)
        if timed_out:
            self.kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
        seconds = time.monotonic() - started
        self.kill_leftovers(pid)
        seen = [os.fstat(fd).st_size for fd in outputs]
        limits = [self.config["output_limit"]] * 2 + [STATUS_LIMIT]
        report = {"status": "ok", "error_type": "", "message": "", "seconds": round(seconds, 4),
                  "memory": usage.ru_maxrss * 1024, "seen": seen, "sizes": [min(n, m) for n, m in zip(seen, limits)]}
        cpu_seconds = usage.ru_utime + usage.ru_stime
        signalled = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        if timed_out or children_cpu() > cpu_end or signalled == signal.SIGXCPU or (
                signalled == signal.SIGKILL and cpu_seconds >= cpu):
            report.update(status="timeout", error_type="Timeout", message="time limit exceeded")
        elif signalled is not None:
            try:
                name = signal.Signals(signalled).name
            except ValueError:            # the real-time signals between SIGRTMIN and SIGRTMAX have none
                name = f"signal {signalled}"
            report.update(status="crash", error_type=name, message=f"killed by {name}")
        elif os.WEXITSTATUS(status) != 0:
            report.update(status="crash", error_type="ProgramExited",
                          message=f"exited with code {os.WEXITSTATUS(status)}")
        return report

    # -- cleanup
    @staticmethod
    def kill_group(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_leftovers(self, pid=None):
        """Kills and reaps every process the program started, daemons included.

        Isolated, this worker is the init of its own PID namespace, and the programs' processes are
        its only other members: one kill(-1) reaches them all, and each orphan is re-parented here.
        Unisolated it is a child subreaper, so each orphan is re-parented to it, and each child is
        killed in turn (its process group first). Either way, once no child is left, no descendant is left.
        """
        if pid is not None and not self.root:
            self.kill_group(pid)
        while True:
            try:
                child, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if child == 0:
                os.kill(-1, signal.SIGKILL) if self.root else self.kill_children()
                time.sleep(0.0005)

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
