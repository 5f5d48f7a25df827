"""Sandbox worker: a small process that forks one process per program run and watches it.

The pool starts it as `python -I -S -c '<import this, main()>' '<config json>' <socket fd>`.
It imports a few standard modules only and starts no threads: every program's process is a
fork of it, so its size is the cost of each fork, and a multi-threaded parent could leave a
child holding another thread's lock.

This process never holds a test: in a call run the judge (judge.py, its own process) holds
them, and the worker only passes the program its two ends of the judge's channel. Protocol on
the socket, each message a 4-byte big-endian length and UTF-8 JSON:

  hello    worker -> pool   {"isolated": bool, "tmp": path}
  request  pool -> worker   {"timeout": s, "source": str, "apps": bool, "stdin": [str] | null,
                            "names": [the names the tests take from the program]}
                            with the program's ends [status, calls] of the judge's channel
                            when stdin is null (a call run)
  reply    worker -> pool   {"runs": [report, ...]}

A call run is one program process answering the judge until the judge closes the channel; a
standard-input run is one program process per input, stopping at the first that does not
end cleanly. A report says how the program's process ended and what it wrote: status ok |
compile_error | program_error | timeout | crash, error_type, message, stdout, stderr,
stdout_overflow, seconds, memory.
"""
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time

from bcoder.sandbox import messages, program
from bcoder.sandbox.isolation import (PR_SET_CHILD_SUBREAPER, ROOT_PREFIX, SCRATCH_DIRS, WORK_DIR, become, interpreter_paths,
                                      isolate, kept_in_scratch, new_directory, not_dumpable, prctl,
                                      unshare_ipc)

# Imported once here so that programs do not pay for them after each fork: the small modules
# programs use most (HumanEval prompts import typing). Each megabyte here costs every fork.
PRELOADED = ("array", "bisect", "collections", "copy", "functools", "heapq", "itertools", "math",
             "operator", "re", "string", "typing")
for _name in PRELOADED:
    __import__(_name)

STATUS_LIMIT = 1 << 20       # bytes of status lines kept from a standard-input run

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
        self.uid = config["uid"]          # None: programs run as this process's user
        self.sock = socket.socket(fileno=sock_fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)               # nothing of the worker's may reach a child's stdout
        os.close(devnull)
        not_dumpable()                    # a program running as this user cannot read this process
        sys.path += config["site_packages"]
        paths = interpreter_paths(config["site_packages"])
        self.root = isolate(paths) if self.uid is not None else None
        self.kept = kept_in_scratch(paths)
        prctl(PR_SET_CHILD_SUBREAPER, 1, "prctl(PR_SET_CHILD_SUBREAPER)")
        self.kill_leftovers()             # of a previous worker in this slot
        if self.root:
            self.work, self.inside = self.root + WORK_DIR, self.root
        else:
            self.work, self.inside = new_directory(ROOT_PREFIX, 0o711), ""
        program.add_site_builtins()
        program.warm_up()
        gc.collect()
        gc.freeze()                       # keeps forked children from copying GC'd pages

    def serve(self):
        messages.send(self.sock, {"isolated": self.root is not None, "tmp": self.root or self.work})
        while True:
            request, fds = messages.receive(self.sock)
            if request is None:
                break
            deadline = time.monotonic() + request["timeout"]
            if request["stdin"] is None:
                runs = [self.run(request, deadline, None, fds)]
            else:
                runs = []
                for stdin in request["stdin"]:
                    runs.append(self.run(request, deadline, stdin, []))
                    if runs[-1]["status"] != "ok":
                        break
            for fd in fds:
                os.close(fd)
            messages.send(self.sock, {"runs": runs})
        if not self.root:                 # (the pool removes the root's empty mount point)
            remove(self.work)

    # -- one run
    def run(self, request, deadline, stdin_text, channel):
        """One program process: a call run's answers the judge through `channel` ([calls, status]);
        a standard-input run's reads `stdin_text` and writes its status lines to this worker."""
        if stdin_text is None:
            stdin = os.open(os.devnull, os.O_RDONLY)
        else:
            stdin = os.memfd_create("stdin")
            program.write_all(stdin, stdin_text.encode())
            os.lseek(stdin, 0, os.SEEK_SET)
        out, err = os.pipe(), os.pipe()
        status = None if stdin_text is None else os.pipe()
        fds = [stdin, out[1], err[1], *(channel if status is None else [status[1]])]
        started = time.monotonic()
        workdir = f"{self.work}/{os.urandom(8).hex()}"
        os.mkdir(workdir, 0o700)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        # Set here, not in the child: each page a forked child first writes costs it a copy, and
        # os.environ's update touches some eighty.
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir[len(self.inside):]
        high = high_copies(fds)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                arrange_fds(high)
                self.enter_program(workdir, deadline - started)
                code = program.program_main(request["source"], request["apps"], stdin_text is not None,
                                            request.get("names", ()))
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except BaseException:
                        pass
                os._exit(code)
        for fd in high + fds[:3] + ([status[1]] if status else []):
            os.close(fd)
        readers = [out[0], err[0]] + ([status[0]] if status else [])
        report = self.watch(pid, readers, started, deadline)
        self.clean_files(workdir)
        return report

    def enter_program(self, workdir, seconds):
        os.setsid()
        cpu = int(seconds) + 1
        limits = {resource.RLIMIT_AS: self.config["memory_limit"],
                  resource.RLIMIT_CPU: (cpu, cpu + 1),
                  resource.RLIMIT_NPROC: self.config["max_processes"],
                  resource.RLIMIT_FSIZE: self.config["max_file_size"],
                  resource.RLIMIT_NOFILE: self.config["max_open_files"],
                  resource.RLIMIT_CORE: 0}
        for kind, value in limits.items():
            resource.setrlimit(kind, value if isinstance(value, tuple) else (value, value))
        if self.root:
            unshare_ipc()                 # System V memory and queues die with the program
            os.chroot(self.root)
        os.chdir(workdir[len(self.inside):])
        become(self.uid)

    def watch(self, pid, readers, started, deadline):
        """Collects the program's output until it exits or the deadline passes; then kills and
        reaps everything it started."""
        pidfd = os.pidfd_open(pid)
        limits = [self.config["output_limit"]] * 2 + [STATUS_LIMIT]
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
            self.kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
        seconds = time.monotonic() - started
        self.kill_leftovers(pid)
        while open_fds:                   # every writer is dead now: read to end of file
            self.read_ready(open_fds, readers, open_fds, kept, seen, limits)
        for fd in readers:
            os.close(fd)
        return self.report(status, usage, timed_out, seconds, kept, seen)

    @staticmethod
    def read_ready(ready, readers, open_fds, kept, seen, limits):
        for fd in list(ready):
            i = readers.index(fd)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.remove(fd)
            seen[i] += len(chunk)
            kept[i] += chunk[:max(0, limits[i] - len(kept[i]))]

    @staticmethod
    def report(status, usage, timed_out, seconds, kept, seen):
        """How the program's process ended, and what it wrote."""
        cpu_seconds = usage.ru_utime + usage.ru_stime
        report = {"status": "ok", "error_type": "", "message": "",
                  "stdout": kept[0].decode(errors="replace"), "stderr": kept[1].decode(errors="replace"),
                  "stdout_overflow": seen[0] > len(kept[0]),
                  "seconds": round(seconds, 4), "memory": usage.ru_maxrss * 1024}
        if len(kept) > 2:                 # a standard-input run: the harness's status lines
            lines = [_message(line) for line in kept[2].decode(errors="replace").splitlines()]
            if lines and lines[0] and lines[0][0] == "compile_error":   # written before the program ran
                report.update(status="compile_error", error_type=lines[0][1], message=lines[0][2])
                return report
            error = next((m for m in lines[1:] if m and m[0] == "program_error"), None)
            if error:                     # the program could forge one: it only lowers its reward
                report.update(status="program_error", error_type=error[1], message=error[2])
                return report
        if timed_out or (os.WIFSIGNALED(status) and (os.WTERMSIG(status) == signal.SIGXCPU or (
                os.WTERMSIG(status) == signal.SIGKILL and cpu_seconds >= int(seconds) + 1))):
            report.update(status="timeout", error_type="Timeout", message="time limit exceeded")
        elif os.WIFSIGNALED(status):
            name = signal.Signals(os.WTERMSIG(status)).name
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

        This worker is a child subreaper, so each orphan is re-parented to it: once no
        child is left, no descendant is left. While some are, root kills by the slot's uid
        (one kill(-1) reaches them in any session); otherwise each child is killed in turn.
        """
        if pid is not None:
            self.kill_group(pid)
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
        if self.root:                     # the scratch directories: whatever the program left
            for path in SCRATCH_DIRS:
                for entry in set(os.listdir(self.root + path)) - self.kept.get(path, set()):
                    remove(os.path.join(self.root + path, entry))


def _message(line):
    """A status line [kind, type, message] as strings, or None for anything else."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, list) or len(message) != 3:
        return None
    return [str(field) for field in message]


def remove(path):
    """Removes a file or tree, even one whose permissions the program took away."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            with os.scandir(path) as entries:
                for entry in list(entries):
                    remove(entry.path)
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def main():
    Worker(json.loads(sys.argv[1]), int(sys.argv[2])).serve()
