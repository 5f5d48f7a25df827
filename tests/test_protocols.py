"""The evaluation protocols (docs/method.md#ranking-and-the-protocols) against exact enumeration, and on a
trained (smoke) run."""
import itertools
import json
import math
import random
import subprocess
import sys

import pytest
from smoke_run import REPO, smoke_run_dir

from bcoder.data.apps import load_apps
from bcoder.data.loading import load_split
from bcoder.data.problems import Problem, default_data_dir
from bcoder.protocols import PROTOCOLS, pass_at_k, protocol_pass_at_k, protocol_report, protocol_table, top_k_solved
from bcoder.run import read_run_config
from bcoder.sandbox import UnitTests


@pytest.fixture(scope="module")
def run_dir():
    return smoke_run_dir()


def candidates(scores, passed, example_passed=None):
    example_passed = example_passed or [True] * len(scores)
    return [{"return": s, "passed": p, "example_passed": e} for s, p, e in zip(scores, passed, example_passed)]


def enumerate_top_k(scores, passed, k, m, keep):
    """The protocol by brute force: every m-subset, its kept members ranked, the top k submitted."""
    n, solved, total = len(scores), 0, 0
    for subset in itertools.combinations(range(n), m):
        ranked = sorted((i for i in subset if keep[i]), key=lambda i: (-scores[i], i))[:k]
        solved += any(passed[i] for i in ranked)
        total += 1
    return solved / total


def test_pass_at_k_matches_exact_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_top_k_over_m_subsets_matches_exact_enumeration():
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 7)
        scores = [rng.choice([rng.random(), 0.5]) for _ in range(n)]  # some ties
        passed = [rng.random() < 0.4 for _ in range(n)]
        examples = [rng.random() < 0.6 for _ in range(n)]
        m = rng.randint(1, n)
        k = rng.randint(1, m)
        for keep in ([True] * n, examples, passed):
            expected = enumerate_top_k(scores, passed, k, m, keep)
            assert top_k_solved(scores, passed, k, m, keep) == pytest.approx(expected), (scores, passed, keep, k, m)


def test_ranking_submits_the_highest_return():
    # Only the best-scored program passes: ranked pass@1 is 1, unranked pass@1 is 1/4.
    group = candidates([-3.0, 2.5, -0.5, 1.0], [False, True, False, False])
    assert protocol_pass_at_k("ranked", group, 1) == 1.0
    assert protocol_pass_at_k("unranked", group, 1) == 0.25
    # The passing program is second best: it takes k=2.
    group = candidates([-3.0, 2.5, -0.5, 3.0], [False, True, False, False])
    assert protocol_pass_at_k("ranked", group, 1) == 0.0 and protocol_pass_at_k("ranked", group, 2) == 1.0
    # From m=2 random of the 4: solved iff the passing program is drawn and the other drawn is not the 3.0 one.
    assert protocol_pass_at_k("ranked", group, 1, m=2) == pytest.approx(2 / math.comb(4, 2))


def test_filtered_without_survivors_is_unsolved():
    group = candidates([1.0, 2.0, 3.0], [True, True, False], example_passed=[False, False, False])
    assert protocol_pass_at_k("filtered", group, 1) == 0.0
    assert protocol_pass_at_k("filtered", group, 1, m=2) == 0.0
    assert protocol_pass_at_k("oracle", group, 1) == 1.0
    # The survivor that fails the hidden tests is submitted over the better-scored ones that were dropped.
    group = candidates([1.0, 2.0, 3.0], [True, True, False], example_passed=[True, False, True])
    assert protocol_pass_at_k("filtered", group, 1) == 0.0 and protocol_pass_at_k("filtered", group, 2) == 1.0


def test_oracle_bounds_ranked_and_filtered_on_random_data():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 12)
        group = candidates([rng.gauss(0, 1) for _ in range(n)], [rng.random() < 0.3 for _ in range(n)],
                           [rng.random() < 0.5 for _ in range(n)])
        m = rng.randint(1, n)
        c = sum(g["passed"] for g in group)
        oracle = protocol_pass_at_k("oracle", group, 1, m)
        assert oracle == pytest.approx(1 - math.comb(n - c, m) / math.comb(n, m))  # pass@m
        for k in range(1, m + 1):
            ranked, filtered = (protocol_pass_at_k(p, group, k, m) for p in ("ranked", "filtered"))
            assert protocol_pass_at_k("oracle", group, k, m) + 1e-12 >= max(ranked, filtered)
            assert ranked >= 0 and filtered >= 0


def test_table_skips_a_k_larger_than_the_samples_and_groups_by_difficulty():
    groups = [candidates([0.0, 1.0], [True, False]), candidates([1.0, 0.0], [True, False])]
    table = protocol_table(groups, PROTOCOLS, ks=(1, 5))
    assert table["ranked"] == {"pass@1": 0.5} and table["unranked"] == {"pass@1": 0.5}
    problems = [Problem(f"p{i}", "", UnitTests(), UnitTests(), difficulty=d)
                for i, d in enumerate(["interview", "introductory", "interview"])]
    records = [{"pool": "main", "task_id": f"p{i}", "return": r, "passed": p, "example_passed": True}
               for i, r, p in [(0, 1.0, True), (0, 0.0, False), (1, 0.0, False), (2, 1.0, False), (2, 0.0, True)]]
    report = protocol_report(records, problems, ks=(1,))
    assert report["ranked"]["pass@1"] == pytest.approx(1 / 3) and report["problems"] == 3
    assert report["by_difficulty"]["interview"]["ranked"]["pass@1"] == 0.5
    assert report["by_difficulty"]["introductory"]["oracle"]["pass@1"] == 0.0


def test_m_holds_the_ks_it_can_and_the_oracle_ranks_the_main_pool():
    """Table 1: pass@1 ranked from m = 2 of the pool, pass@3 (k > m) from the whole pool; the oracle reads the
    main pool even where a filter pool exists (Table 9 filters Table 1's candidates)."""
    group = candidates([3.0, 2.0, 1.0, 0.0], [False, True, False, False])
    table = protocol_table([group], ("ranked",), ks=(1, 3), m=2)
    assert table["ranked"]["pass@1"] == pytest.approx(2 / 6)   # the 2-subsets with the passing one on top
    assert table["ranked"]["pass@3"] == 1.0                    # the top 3 of all 4 hold it
    problems = [Problem("p", "", UnitTests(), UnitTests())]
    records = [{"pool": "main", "task_id": "p", "return": 0.0, "passed": True, "example_passed": True},
               {"pool": "filter", "task_id": "p", "return": 0.0, "passed": False, "example_passed": True}]
    report = protocol_report(records, problems, ("filtered", "oracle"), ks=(1,))
    assert report["oracle"]["pass@1"] == 1.0 and report["filtered"]["pass@1"] == 0.0


def test_eval_stage_numbers_follow_from_its_samples(run_dir):
    """eval.json's tables, recomputed by brute force from eval_samples.jsonl (the programs, their outcomes
    on all tests and on the example tests, and their R~)."""
    report = json.loads((run_dir / "eval.json").read_text())
    records = [json.loads(line) for line in (run_dir / "eval_samples.jsonl").read_text().splitlines()]
    assert report["policies"] == ["ckpt", "theta", "control"]   # the CE-only control beside theta
    assert len(records) == 3 * 4 * 4  # policies x problems x samples
    m = report["settings"]["m"]
    for policy in report["policies"]:
        by_task = {}
        for r in records:
            if r["policy"] == policy:
                by_task.setdefault(r["task_id"], []).append(r)
        assert len(by_task) == report[policy]["problems"] == 4
        # theta's R~ ranks in the protocols; the free baselines (phi's R~, theta_ckpt's log-probability) in ranked_by
        tables = [(report[policy], "return", PROTOCOLS), *[(report[policy]["ranked_by"][name], field, ("ranked", "filtered"))
                                                         for name, field in (("phi", "return_phi"), ("logprob", "logprob"))]]
        for table, field, protocols in tables:
            for protocol in protocols:
                values = []
                for group in by_task.values():
                    scores = [r[field] for r in group]
                    passed = [r["outcome"] == "passed" for r in group]
                    keep = {"unranked": [True] * len(group), "ranked": [True] * len(group), "oracle": passed,
                            "filtered": [r["example_outcome"] in ("passed", "no_tests") for r in group]}[protocol]
                    subset = 1 if protocol == "unranked" else m       # unranked: pass@1 = c / n
                    values.append(enumerate_top_k(scores, passed, 1, subset, keep))
                assert table[protocol]["pass@1"] == pytest.approx(sum(values) / len(values)), (policy, field, protocol)
    for outcome in ("passed", "failed", "runtime_error", "compile_error"):
        returns = [r["return"] for r in records if r["outcome"] == outcome]
        expected = sum(returns) / len(returns) if returns else None
        assert report["mean_return_by_outcome"][outcome] == pytest.approx(expected), outcome
        assert report["return_by_outcome"]["all"][outcome]["count"] == len(returns)


def test_cli_judges_another_generators_programs(run_dir, tmp_path):
    test = load_split(read_run_config(run_dir).data)[1]
    samples = tmp_path / "samples.jsonl"
    lines = []
    for problem in test[:2]:
        lines += [{"task_id": problem.task_id, "program": problem.solutions[0], "policy": "reference"},
                  {"task_id": problem.task_id, "program": "def broken(:", "policy": "reference"}]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "protocols.json"
    result = subprocess.run([sys.executable, "-m", "bcoder.evaluate", "--run", str(run_dir), "--protocol",
                             "unranked,ranked,oracle", "--samples", str(samples), "--out", str(out), "--k", "1,2"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["policies"] == ["reference"] and "filtered" not in report["reference"]
    assert report["reference"]["unranked"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert report["reference"]["oracle"]["pass@1"] == 1.0
    assert report["return_by_outcome"]["all"]["compile_error"]["count"] == 2
    rows = [json.loads(line) for line in (tmp_path / "protocols_samples.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in rows] == ["passed", "compile_error"] * 2


def test_samples_are_judged_on_all_their_tests(run_dir, tmp_path):
    """An APPS problem whose tests are all shown in its question has no hidden test: a program that
    does nothing must not pass it (it did when only hidden tests judged)."""
    apps = default_data_dir() / "apps_train_coderl5.jsonl"
    problems = {p.task_id: p for p in load_apps(apps)}
    no_hidden = [t for t, p in problems.items() if not p.hidden_tests.cases]
    assert no_hidden
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "program": "pass"}) + "\n" for t in no_hidden))
    out = tmp_path / "apps.json"
    result = subprocess.run([sys.executable, "-m", "bcoder.evaluate", "--run", str(run_dir), "--problems", str(apps),
                             "--format", "apps", "--samples", str(samples), "--out", str(out), "--protocol",
                             "unranked,oracle", "--k", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["samples"]["unranked"]["pass@1"] == 0.0 and report["samples"]["oracle"]["pass@1"] == 0.0
