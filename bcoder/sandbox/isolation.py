"""Linux isolation shared by the worker (programs) and the judge (tests): namespaces, the file
system root their processes see, and dropping to an unprivileged uid. Standard library only."""
import ctypes
import os
import sys
import sysconfig

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")      # inside the root: writable, emptied after each run
DEVICES = ("null", "zero", "full", "random", "urandom")
WORK_DIR = "/.bcoder-work"                          # inside the root: one work directory per run
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


def isolate(paths):
    """Enters new network (no interface up, not even loopback), IPC (no System V memory or queues
    shared with anything outside) and mount namespaces, and builds the root that the processes
    started from here see: `paths` read-only, a few devices, emptied scratch directories and the
    work directory; no /proc, no home, no data set. Returns the root's path: an empty directory
    outside this mount namespace, for the pool to remove."""
    check(libc.unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWNS), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    root = new_directory(ROOT_PREFIX, 0o755)
    _mount_tmpfs(root, b"size=16m,mode=0755")
    for path in SCRATCH_DIRS:          # first: an interpreter under /tmp is bound on top of them
        os.makedirs(root + path, mode=0o755, exist_ok=True)
        _mount_tmpfs(root + path, b"size=256m,mode=1777")
    for path in paths:
        inside = root + path
        if os.path.islink(path) and os.path.dirname(path) == "/":     # /bin -> usr/bin
            os.symlink(os.readlink(path), inside)
        elif not os.path.exists(inside):
            os.makedirs(inside, mode=0o755)
            real = os.path.realpath(path).encode()
            check(libc.mount(real, inside.encode(), None, MS_BIND | MS_REC, None), f"bind {path}")
            check(libc.mount(None, inside.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, None),
                  f"remount {path} read-only")
    for device in DEVICES:
        open(f"{root}/dev/{device}", "w").close()
        check(libc.mount(f"/dev/{device}".encode(), f"{root}/dev/{device}".encode(), None, MS_BIND, None),
              f"bind /dev/{device}")
    os.makedirs(root + WORK_DIR, mode=0o711)
    return root


def kept_in_scratch(paths):
    """{scratch directory: names in it that lead to one of `paths`}: what emptying it must keep (an
    interpreter installed under /tmp)."""
    kept = {}
    for scratch in SCRATCH_DIRS:
        for path in paths:
            if path.startswith(scratch + "/"):
                kept.setdefault(scratch, set()).add(path[len(scratch) + 1:].split("/")[0])
    return kept


def unshare_ipc():
    """A new IPC namespace: nothing System V outlives this process and its children."""
    check(libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")


def _mount_tmpfs(path, options):
    check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"mount tmpfs {path}")


def become(uid):
    """Drops to `uid` (None: stays this user), dies with the parent, and can never gain privileges."""
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)      # SIGKILL
    prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
