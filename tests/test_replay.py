"""The replay store: round trip, dedup, ground-truth mixing, reproducible batches, reopening, and only
its own databases."""
import collections
import itertools
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bcoder.replay import ReplayError, ReplayStore, ScoredProgram
from bcoder.sandbox.schema import ProgramResult, TestResult


class Task:
    def __init__(self, task_id):
        self.task_id, self.prompt, self.entry_point = task_id, f"prompt of {task_id}", "f"


def fill(store, problems=4, real=3, generated=20):
    store.add_problems(Task(f"p{i}") for i in range(problems))
    outcomes = ["passed", "failed", "runtime_error", "compile_error"]
    store.add([ScoredProgram(f"p{i}", f"truth {i} {j}", "passed", 1.0, is_ground_truth=True)
               for i in range(problems) for j in range(real)]
              + [ScoredProgram(f"p{i}", f"sample {i} {j}", outcomes[j % 4], -0.3, model="ckpt")
                 for i in range(problems) for j in range(generated)])


@pytest.fixture
def store(tmp_path):
    with ReplayStore(tmp_path / "replay.db", create=True) as opened:
        yield opened


def test_round_trip_of_a_sandbox_result(store):
    store.add_problems([Task("p0")])
    result = ProgramResult("failed", [TestResult("passed"), TestResult("failed", "WrongAnswer", "expected 2, got 3")])
    assert store.add_results(["p0"], ["def f(): return 3"], [result], model="run/sft@step100", tokens=[[5, 6, 1]]) == 1
    stored = store.get("p0", "def f(): return 3")
    assert (stored.problem_id, stored.program, stored.outcome, stored.reward, stored.tokens, stored.model,
            stored.is_ground_truth, stored.times_sampled) == \
        ("p0", "def f(): return 3", "failed", -0.3, [5, 6, 1], "run/sft@step100", False, 1)
    assert stored.tests == [{"status": "passed", "error_type": "", "message": ""},
                            {"status": "failed", "error_type": "WrongAnswer", "message": "expected 2, got 3"}]
    assert stored.created > 0 and store.get("p0", "other") is None
    assert store.problem_ids() == ["p0"]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_readding_keeps_the_first_score_and_counts_samples(store):
    store.add_problems([Task("p0"), Task("p1")])
    first = ScoredProgram("p0", "x = 1", "failed", -0.3, model="a")
    assert store.add([first, ScoredProgram("p1", "x = 1", "passed", 1.0)]) == 2     # same text, other problem
    assert store.add([ScoredProgram("p0", "x = 1", "runtime_error", -0.6, model="b", tokens=[1])] * 2) == 0
    stored = store.get("p0", "x = 1")
    assert (stored.outcome, stored.reward, stored.model, stored.times_sampled, stored.tokens) == \
        ("failed", -0.3, "a", 3, [1])       # tokens fill in; the score stays
    assert store.add([ScoredProgram("p0", "x = 1", "passed", 1.0, is_ground_truth=True)]) == 0
    stored = store.get("p0", "x = 1")
    assert stored.is_ground_truth and stored.times_sampled == 3 and len(store) == 2


def test_one_transaction_per_add(store):
    store.add_problems([Task("p0")])
    with pytest.raises(ValueError, match="add_problems first"):
        store.add([ScoredProgram("p0", "a", "passed", 1.0), ScoredProgram("nope", "b", "passed", 1.0)])
    with pytest.raises(ValueError, match="unknown outcome"):
        store.add([ScoredProgram("p0", "a", "passed", 1.0), ScoredProgram("p0", "b", "ok", 1.0)])
    with pytest.raises(sqlite3.IntegrityError):
        store.add([ScoredProgram("p0", "a", "passed", 1.0), ScoredProgram("p0", None, "passed", 1.0)])
    assert len(store) == 0


def test_counts_per_outcome(store):
    fill(store)
    assert store.counts() == {"passed": 12 + 20, "failed": 20, "runtime_error": 20, "compile_error": 20}
    assert store.counts(is_ground_truth=True) == {"passed": 12, "failed": 0, "runtime_error": 0, "compile_error": 0}
    assert store.counts(problem_id="p1", is_ground_truth=False)["failed"] == 5
    assert len(store.programs("p1")) == 23 and len(store.programs(is_ground_truth=True)) == 12


def test_batches_mix_ground_truth_at_rho_real_and_cover_each_epoch(store):
    fill(store)
    batches = store.batches(batch_size=8, rho_real=0.5, seed=3)
    assert batches.sizes() == (4, 4)
    seen = collections.Counter()
    for step in range(20):                      # 80 generated rows: exactly one epoch of them
        rows = batches[step]
        assert [r.is_ground_truth for r in rows] == [True] * 4 + [False] * 4
        seen.update(r.id for r in rows if not r.is_ground_truth)
    assert len(seen) == 80 and set(seen.values()) == {1}
    real = collections.Counter(i for step in range(3) for i in batches.ids_of(step)[:4])
    assert len(real) == 12 and set(real.values()) == {1}        # 12 ground truths: one epoch
    assert store.batches(10, rho_real=0.25).sizes() == (2, 8)
    assert store.batches(10, rho_real=0.0).sizes() == (0, 10)
    only = store.batches(6, rho_real=0.5, problem_ids=["p2"])
    assert {r.problem_id for step in range(5) for r in only[step]} == {"p2"}


def test_batches_draw_generated_programs_as_often_as_they_were_sampled(store):
    """D_train keeps every sample: a program sampled three times comes three times per epoch."""
    store.add_problems([Task("p0")])
    store.add([ScoredProgram("p0", "truth", "passed", 1.0, is_ground_truth=True)])
    store.add([ScoredProgram("p0", "common", "failed", -0.3)] * 3 + [ScoredProgram("p0", "rare", "passed", 1.0)])
    store.add([ScoredProgram("p0", "truth", "passed", 1.0, is_ground_truth=True)] * 2)  # truths count once
    batches = store.batches(batch_size=2, rho_real=0.5, seed=0)
    ids = {p.program: p.id for p in store.programs("p0")}
    drawn = collections.Counter(batches.ids_of(step)[1] for step in range(4 * 25))   # 25 epochs of 4 draws
    assert drawn == {ids["common"]: 75, ids["rare"]: 25}
    assert collections.Counter(batches.ids_of(step)[0] for step in range(10)) == {ids["truth"]: 10}


def test_batches_are_reproducible_from_seed_and_step_even_after_more_rows(store):
    fill(store)
    batches = store.batches(batch_size=8, seed=7)
    first = [batches.ids_of(step) for step in range(25)]
    assert first == [store.batches(batch_size=8, seed=7).ids_of(step) for step in range(25)]
    assert [batches.ids_of(step) for step in (24, 3)] == [first[24], first[3]]      # any order: resume
    assert [step for step, _ in itertools.islice(batches.iterate(start=5), 3)] == [5, 6, 7]
    assert first != [store.batches(batch_size=8, seed=8).ids_of(step) for step in range(25)]
    store.add_problems(Task(f"p{i}") for i in range(4, 6))
    store.add([ScoredProgram(f"p{i}", f"later {i} {j}", "failed", -0.3) for i in range(6) for j in range(10)])
    # more programs arrive; max_id pins the old data (their sample counts unchanged)
    assert [store.batches(8, seed=7, max_id=batches.max_id).ids_of(s) for s in range(25)] == first
    assert store.batches(8, seed=7).max_id > batches.max_id


def test_only_one_kind_or_none(store):
    store.add_problems([Task("p0")])
    with pytest.raises(ValueError, match="no programs"):
        store.batches(4)
    store.add([ScoredProgram("p0", "s", "failed", -0.3)])
    assert [r.program for r in store.batches(4, rho_real=0.5)[0]] == ["s"] * 4


def test_reopening_an_existing_file_from_another_process(tmp_path):
    path = tmp_path / "replay.db"
    with ReplayStore(path, create=True) as store:
        fill(store)
        expected = store.batches(8, seed=1).ids_of(2)
    reader = ("import sys; from bcoder.replay import ReplayStore; s = ReplayStore(sys.argv[1], read_only=True); "
              "print(len(s), s.batches(8, seed=1).ids_of(2), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", reader, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split(" ", 1) == ["92", f"{expected} False\n"]
    with ReplayStore(path) as store:
        assert store.add([ScoredProgram("p0", "truth 0 0", "passed", 1.0, is_ground_truth=True)]) == 0
        assert len(store) == 92 and store.problem_ids() == ["p0", "p1", "p2", "p3"]


def test_only_its_own_databases_are_opened_and_never_changed(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(ReplayError, match=f"{missing}: no replay database there"):
        ReplayStore(missing)
    assert not missing.exists()
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE programs (id INTEGER PRIMARY KEY, text TEXT)")
    db.commit()
    db.close()
    conflicting = tmp_path / "conflicting.db"
    with ReplayStore(conflicting, create=True):
        pass
    db = sqlite3.connect(conflicting)
    db.execute("ALTER TABLE programs ADD COLUMN extra TEXT")
    db.commit()
    db.close()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is no database" * 100)
    for path, error in ((foreign, "user_version is 0"), (conflicting, "table 'programs' has columns"),
                        (corrupt, "not a readable replay database")):
        before = path.read_bytes()
        for read_only in (False, True):
            with pytest.raises(ReplayError, match=str(path)) as raised:
                ReplayStore(path, read_only=read_only)
            assert error in str(raised.value)
        assert path.read_bytes() == before
    assert not Path(f"{foreign}-wal").exists() and not Path(f"{corrupt}-wal").exists()   # not switched to WAL


def test_a_read_only_store_reads_and_refuses_to_write(tmp_path):
    path = tmp_path / "replay.db"
    with ReplayStore(path, create=True) as store:
        fill(store)
    with ReplayStore(path, read_only=True) as store:
        assert len(store) == 92 and store.batches(8).ids_of(0)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.add([ScoredProgram("p0", "new", "passed", 1.0)])
