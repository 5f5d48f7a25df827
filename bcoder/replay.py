"""The replay store: every program ever scored, in one SQLite file (standard library only).

    with ReplayStore("run/replay.db") as store:          # creates the file, or reopens it
        store.add_problems(problems)                           # anything with .task_id, .prompt
        store.add_results(ids, programs, results, model="ckpt")   # sandbox ProgramResults
        store.add([ScoredProgram(task_id, source, "passed", 1.0, is_ground_truth=True)])
        store.counts()                                         # {"passed": n, "failed": n, ...}
        batches = store.batches(batch_size=128, rho_real=0.5, seed=0)
        rows = batches[step]                                   # list of StoredProgram

A program is stored once per (problem, program text): adding it again keeps the first
score (outcome, reward, per-test results, model, time) and counts one more sample in
`times_sampled` (ground-truth additions count none; a program that is ever added as ground
truth is ground truth). Each `add` is one transaction. The database runs in WAL mode:
one writer at a time, readers (another process evaluating) alongside it.
"""
import contextlib
import json
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bcoder.sandbox.schema import REWARDS

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS problems (
    id TEXT PRIMARY KEY,
    prompt TEXT NOT NULL,
    entry_point TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS programs (
    id INTEGER PRIMARY KEY,            -- grows with insertion order (rows are never deleted)
    problem_id TEXT NOT NULL REFERENCES problems (id),
    program TEXT NOT NULL,
    tokens TEXT,                       -- JSON list of token ids, or NULL
    outcome TEXT NOT NULL,
    reward REAL NOT NULL,
    tests TEXT NOT NULL,               -- JSON list of {status, error_type, message}, one per test
    is_ground_truth INTEGER NOT NULL,
    model TEXT NOT NULL,               -- what produced it: a name, checkpoint path or step
    created REAL NOT NULL,             -- Unix time of the first addition
    times_sampled INTEGER NOT NULL,
    UNIQUE (problem_id, program)
);
CREATE INDEX IF NOT EXISTS programs_by_kind ON programs (is_ground_truth, id);
"""
COLUMNS = ("problem_id", "program", "tokens", "outcome", "reward", "tests", "is_ground_truth", "model",
           "created", "times_sampled")


@dataclass
class ScoredProgram:
    """A program and its score, to add. `tests` holds one dict per test case."""
    problem_id: str
    program: str
    outcome: str                      # passed | failed | runtime_error | compile_error
    reward: float
    tests: list = ()
    is_ground_truth: bool = False
    model: str = ""
    tokens: list = None

    @classmethod
    def from_result(cls, problem_id, program, result, **fields):
        """From a sandbox ProgramResult; `fields`: is_ground_truth, model, tokens."""
        tests = [{"status": t.status, "error_type": t.error_type, "message": t.message} for t in result.tests]
        return cls(problem_id, program, result.outcome, result.reward, tests, **fields)


@dataclass
class StoredProgram(ScoredProgram):
    id: int = 0
    created: float = 0.0
    times_sampled: int = 0


TABLES = {"problems": {"id", "prompt", "entry_point", "created"}, "programs": {"id", *COLUMNS}}


class ReplayError(ValueError):
    """A file that is not a bcoder replay store (missing, foreign, corrupt, another schema version); the
    message names its path."""


class ReplayStore:
    """The replay store in `path`. create=True makes a new one where no file is; any existing file must
    be a replay store this code wrote (its schema version and tables checked before anything is
    changed: a foreign or corrupt file is never touched). read_only=True opens it for reading only."""

    def __init__(self, path, create=False, read_only=False):
        self.path = str(path)
        exists = Path(path).exists()
        if not exists and not create:
            raise ReplayError(f"{self.path}: no replay database there (the sample stage makes one)")
        try:
            # Autocommit mode: transactions are the explicit ones of _transaction().
            uri = f"{Path(path).resolve().as_uri()}?mode={'ro' if read_only else 'rw' if exists else 'rwc'}"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60)
            if exists:
                try:
                    self._check()
                except (ReplayError, sqlite3.Error):
                    self.db.close()
                    raise
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")     # durable at checkpoints; never corrupt
            self.db.execute("PRAGMA foreign_keys=ON")
            if not exists:
                self.db.executescript(SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as error:
            self.db.close()
            raise ReplayError(f"{self.path}: not a readable replay database ({error})") from None

    def _check(self):
        """ReplayError unless the file holds this schema version's tables, each with its columns."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise ReplayError(f"{self.path}: not a bcoder replay database of schema version {SCHEMA_VERSION} "
                              f"(its user_version is {version})")
        for table, columns in TABLES.items():
            found = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if found != columns:
                raise ReplayError(f"{self.path}: not a bcoder replay database (table {table!r} has columns "
                                  f"{sorted(found) or 'none'}, expected {sorted(columns)})")

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE (the write lock up front) ... COMMIT, or ROLLBACK on an exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def add_problems(self, problems):
        """Adds problems (objects with task_id, prompt and optionally entry_point) not yet stored."""
        now = time.time()
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO problems VALUES (?, ?, ?, ?)",
                                [(p.task_id, p.prompt, getattr(p, "entry_point", ""), now) for p in problems])

    def add(self, programs):
        """Adds ScoredPrograms in one transaction; returns how many were new."""
        programs = list(programs)
        now = time.time()
        rows = []
        for p in programs:
            if p.outcome not in REWARDS:
                raise ValueError(f"unknown outcome {p.outcome!r} (expected one of {sorted(REWARDS)})")
            rows.append((p.problem_id, p.program, None if p.tokens is None else json.dumps(list(p.tokens)),
                         p.outcome, float(p.reward), json.dumps(list(p.tests)), int(bool(p.is_ground_truth)),
                         str(p.model), now, int(not p.is_ground_truth)))
        with self._transaction():
            missing = {p.problem_id for p in programs} - self._known_problems({p.problem_id for p in programs})
            if missing:
                raise ValueError(f"programs of problems not in the store (add_problems first): {sorted(missing)[:5]}")
            before = self._max_id()
            self.db.executemany(
                f"INSERT INTO programs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                "ON CONFLICT (problem_id, program) DO UPDATE SET "
                "times_sampled = times_sampled + excluded.times_sampled, "
                "is_ground_truth = max(is_ground_truth, excluded.is_ground_truth), "
                "tokens = coalesce(tokens, excluded.tokens)", rows)
            return self._max_id() - before

    def add_results(self, problem_ids, programs, results, *, model="", is_ground_truth=False, tokens=None):
        """Adds programs with their sandbox results (parallel lists) in one transaction."""
        tokens = tokens if tokens is not None else [None] * len(programs)
        if not len(problem_ids) == len(programs) == len(results) == len(tokens):
            raise ValueError("problem_ids, programs, results (and tokens) must have the same length")
        return self.add(ScoredProgram.from_result(i, p, r, model=model, is_ground_truth=is_ground_truth, tokens=t)
                        for i, p, r, t in zip(problem_ids, programs, results, tokens))

    def _known_problems(self, ids):
        known = set()
        ids = list(ids)
        for start in range(0, len(ids), 500):             # SQLite limits the parameters of a query
            chunk = ids[start:start + 500]
            known.update(row[0] for row in self.db.execute(
                f"SELECT id FROM problems WHERE id IN ({', '.join('?' * len(chunk))})", chunk))
        return known

    def _max_id(self):
        return self.db.execute("SELECT coalesce(max(id), 0) FROM programs").fetchone()[0]

    def __len__(self):
        return self.db.execute("SELECT count(*) FROM programs").fetchone()[0]

    def problem_ids(self):
        return [row[0] for row in self.db.execute("SELECT id FROM problems ORDER BY id")]

    def get(self, problem_id, program):
        """The stored program, or None."""
        found = self._select("WHERE problem_id = ? AND program = ?", (problem_id, program))
        return found[0] if found else None

    def programs(self, problem_id=None, is_ground_truth=None):
        """Stored programs, in insertion order, optionally of one problem and/or kind."""
        where, values = _filters(problem_id, is_ground_truth)
        return self._select(where + " ORDER BY id", values)

    def counts(self, problem_id=None, is_ground_truth=None):
        """{outcome: number of stored programs}, every outcome present."""
        where, values = _filters(problem_id, is_ground_truth)
        found = dict(self.db.execute(f"SELECT outcome, count(*) FROM programs {where} GROUP BY outcome", values))
        return {outcome: found.get(outcome, 0) for outcome in REWARDS}

    def _select(self, clause, values):
        names = ("id",) + COLUMNS
        return [_stored(dict(zip(names, row))) for row in
                self.db.execute(f"SELECT {', '.join(names)} FROM programs {clause}", values)]

    def by_ids(self, ids):
        """The stored programs of these row ids, in the given order (repeats allowed)."""
        found = {}
        unique = list(set(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            found.update((p.id, p) for p in self._select(f"WHERE id IN ({', '.join('?' * len(chunk))})", chunk))
        return [found[i] for i in ids]

    def batches(self, batch_size, rho_real=0.5, seed=0, problem_ids=None, max_id=None):
        """MixedBatches over the programs stored now (or with row id <= max_id), optionally
        only those of `problem_ids` (e.g. the training split)."""
        return MixedBatches(self, batch_size, rho_real, seed, problem_ids, max_id)


class MixedBatches:
    """Mini-batches that mix ground-truth and generated programs (docs/method.md#replay-store-and-batches).

    Batch `step` holds round(batch_size * rho_real) ground-truth programs, then generated
    ones for the rest (all of one kind if the other has none). Each kind is read as a
    stream of epochs, each a fresh permutation of its rows seeded by (seed, kind, epoch); a
    generated program comes as many times per epoch as it was sampled (`times_sampled`: the
    paper's D_train keeps every sample, repeats included), a ground truth once. Batch `step`
    is that stream's slice at `step`. A batch
    is therefore a function of (seed, step, the rows with id <= max_id and their sample counts):
    a resumed run that saved `max_id` and its step gets the same data, even after other programs
    were added.
    """

    def __init__(self, store, batch_size, rho_real, seed, problem_ids, max_id):
        if batch_size < 1 or not 0.0 <= rho_real <= 1.0:
            raise ValueError(f"need batch_size >= 1 and 0 <= rho_real <= 1, got {batch_size}, {rho_real}")
        self.store, self.batch_size, self.rho_real, self.seed = store, batch_size, rho_real, seed
        self.max_id = store._max_id() if max_id is None else max_id
        wanted = None if problem_ids is None else set(problem_ids)
        self.ids = {True: [], False: []}          # is_ground_truth -> row ids, ascending
        for row_id, problem_id, is_ground_truth, times_sampled in store.db.execute(
                "SELECT id, problem_id, is_ground_truth, times_sampled FROM programs WHERE id <= ? ORDER BY id",
                (self.max_id,)):
            if wanted is None or problem_id in wanted:
                self.ids[bool(is_ground_truth)] += [row_id] * (1 if is_ground_truth else max(1, times_sampled))
        if not self.ids[True] and not self.ids[False]:
            raise ReplayError(f"{store.path}: no programs of the training problems to draw batches from (run the "
                              f"sample stage first)")
        self._epochs = {}                          # (kind, epoch) -> permutation, the latest few

    def sizes(self):
        """(ground-truth, generated) programs per batch."""
        real = round(self.batch_size * self.rho_real)
        if not self.ids[False]:
            real = self.batch_size
        elif not self.ids[True]:
            real = 0
        return real, self.batch_size - real

    def ids_of(self, step):
        """Row ids of batch `step`: ground truth first."""
        real, generated = self.sizes()
        return self._stream(True, step * real, real) + self._stream(False, step * generated, generated)

    def __getitem__(self, step):
        return self.store.by_ids(self.ids_of(step))

    def iterate(self, start=0):
        """(step, batch) from `start` on, forever."""
        step = start
        while True:
            yield step, self[step]
            step += 1

    def _stream(self, kind, position, count):
        ids = self.ids[kind]
        return [self._permutation(kind, i // len(ids))[i % len(ids)] for i in range(position, position + count)]

    def _permutation(self, kind, epoch):
        key = (kind, epoch)
        if key not in self._epochs:
            order = list(self.ids[kind])
            random.Random(f"{self.seed}/{'real' if kind else 'generated'}/{epoch}").shuffle(order)
            if len(self._epochs) >= 4:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = order
        return self._epochs[key]


def _filters(problem_id, is_ground_truth):
    clauses, values = [], []
    if problem_id is not None:
        clauses.append("problem_id = ?")
        values.append(problem_id)
    if is_ground_truth is not None:
        clauses.append("is_ground_truth = ?")
        values.append(int(bool(is_ground_truth)))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", values


def _stored(row):
    row["tokens"] = None if row["tokens"] is None else json.loads(row["tokens"])
    row["tests"] = json.loads(row["tests"])
    row["is_ground_truth"] = bool(row["is_ground_truth"])
    return StoredProgram(**row)
