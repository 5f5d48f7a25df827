"""Writing results so that a kill at any moment leaves the old file or the new one, never a torn one.

Every file bcoder writes as a result (config.json, eval.json, report.md, the figures, the samples
files, a rewritten metrics.jsonl) goes through `write_atomic`; every model directory (ckpt/, phi/,
theta/) through `replace_directory`. `RunLock` keeps two processes from writing one run directory.
Standard library only.
"""
import ctypes
import fcntl
import os
import shutil
from pathlib import Path


def write_atomic(path, data):
    """Writes `data` (str, bytes, or an iterable of them, streamed) to `path`: a temporary file in the
    same directory, flushed to disk, then renamed over `path` (rename is atomic on POSIX)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            for chunk in [data] if isinstance(data, (str, bytes)) else data:
                f.write(chunk.encode() if isinstance(chunk, str) else chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _sync_directory(path.parent)


def write_atomic_with(path, write):
    """write(temporary_path) fills a temporary file beside `path`, which then replaces it (for writers
    that take a file name: figures, SQLite backups)."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _sync_directory(path.parent)


def replace_directory(directory, write):
    """write(temporary_directory) fills a fresh directory beside `directory`, which then takes its place
    in one atomic exchange of the two names (renameat2's RENAME_EXCHANGE), so `directory` is always the
    old one or the new one, complete; the old one is removed after."""
    directory = Path(directory)
    temporary = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        write(temporary)
        for file in temporary.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        _sync_directory(temporary)
        if directory.exists():
            _exchange(temporary, directory)      # temporary now names the old directory
        else:
            os.replace(temporary, directory)
        _sync_directory(directory.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2


def _exchange(a, b):
    """Swaps the names of two paths atomically (Linux 3.15+)."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"exchanging {a} and {b}: {os.strerror(errno)}")


def _sync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output(path, force, inputs=()):
    """ValueError when writing `path` would destroy what it should not: an existing file without `force`,
    or one of `inputs` ((flag, path) pairs the command reads)."""
    path = Path(path).resolve()
    for flag, given in inputs:
        if given and Path(given).resolve() == path:
            raise ValueError(f"{path} is both the output and {flag}: choose another output")
    if path.exists() and not force:
        raise ValueError(f"{path} exists: pass --force to replace it")


class LockedError(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory (RUN/.lock, flock): `with RunLock(run_dir): ...`. The
    kernel drops it when the process dies, so a killed run never leaves it held."""

    def __init__(self, directory):
        self.path = Path(directory) / ".lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise LockedError(f"{self.path.parent} is in use by another process (pid {holder})") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
