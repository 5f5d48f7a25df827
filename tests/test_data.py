"""The loaders, the prompts, and every reference solution through the sandbox: all pass, mutations fail."""
import ast
import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import bcoder.data
from bcoder.data.apps import load_apps
from bcoder.data.humaneval import load_humaneval
from bcoder.data.mbpp import load_mbpp, mbpp_test
from bcoder.data.problems import (
    PACKAGED_DATA_DIR,
    DataError,
    Problem,
    default_data_dir,
    recorded_checksums,
    verify_checksum,
)
from bcoder.data.prompt import MBPP_INSTRUCTION, prompt_parts, prompt_text
from bcoder.sampling import fit_prompt, fit_prompts
from bcoder.sandbox import AssertTest, CallTest, Sandbox, SandboxConfig, StdioTest, UnitTests, ValueTest

DATA = default_data_dir()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout=20), workers=os.cpu_count()) as box:
        yield box


def run_references(sandbox, problems):
    pairs = [(p, s) for p in problems for s in p.solutions]
    results = sandbox.run([s for _, s in pairs], [p.tests for p, _ in pairs])
    return [(p.task_id, r.outcome, r.message[:200]) for (p, _), r in zip(pairs, results) if r.outcome != "passed"]


def mutate(program):
    """A wrong program: every function returns None after doing its work."""
    return program.replace("return ", "return None and ")


def test_all_mbpp_references_pass_and_mutations_fail(sandbox):
    problems = load_mbpp(DATA / "mbpp.jsonl")
    assert len(problems) == 974
    assert run_references(sandbox, problems) == []
    mutated = [p for p in problems if "return " in p.solutions[0]][::10]
    results = sandbox.run([mutate(p.solutions[0]) for p in mutated], [p.tests for p in mutated])
    assert not any(r.passed for r in results)


def test_all_humaneval_references_pass_and_mutations_fail(sandbox):
    problems = load_humaneval(DATA / "HumanEval.jsonl.gz")
    assert len(problems) == 164
    assert run_references(sandbox, problems) == []
    results = sandbox.run([p.program(mutate(p.solutions[0][len(p.prompt):])) for p in problems[::8]],
                          [p.tests for p in problems[::8]])
    assert not any(r.passed for r in results)


def test_all_apps_references_pass_and_mutations_fail(sandbox):
    problems = load_apps(DATA / "apps_train_coderl5.jsonl")
    assert sum(len(p.solutions) for p in problems) == 101
    assert run_references(sandbox, problems) == []     # including 2287's top-level `return`s
    results = sandbox.run(["print(-42)", "def is_prime(n): return n == 2"] * len(problems),
                          [p.tests for p in problems for _ in range(2)])
    assert not any(r.passed for r in results)


def test_example_and_hidden_tests_are_kept_apart():
    mbpp = load_mbpp(DATA / "mbpp.jsonl")[0]          # its prompt shows all three asserts
    assert len(mbpp.example_tests.cases) == 3 and len(mbpp.hidden_tests.cases) == 0
    apps = {p.task_id: p for p in load_apps(DATA / "apps_train_coderl5.jsonl")}
    assert apps["1"].example_tests.cases[0].input == "3\n2 2 3\n4 3 7\n10 1 9\n"
    assert len(apps["2404"].example_tests.cases) == 1 and isinstance(apps["2404"].tests.cases[0], CallTest)
    stdin49 = load_apps(DATA / "apps_train_stdin49_mapcoder.jsonl")
    assert len(stdin49) == 49 and all(p.example_tests.cases and p.hidden_tests.cases for p in stdin49)
    assert sum(len(p.tests.cases) for p in stdin49) == 605
    assert all(isinstance(c, StdioTest) for p in stdin49 for c in p.tests.cases)
    assert all(not set(p.example_tests.cases) & set(p.hidden_tests.cases) for p in stdin49)


def test_mbpp_asserts_become_value_tests_when_the_expected_side_is_literal():
    assert mbpp_test("assert f(1, 'a') == [(1, 2)]") == ValueTest("f(1, 'a')", [(1, 2)])
    assert mbpp_test("assert [3] == g(x)") == ValueTest("g(x)", [3])
    assert mbpp_test("assert f(1) == math.pi") == AssertTest("assert f(1) == math.pi")
    assert mbpp_test("assert f(1)") == AssertTest("assert f(1)")


def test_apps_problem_folders(tmp_path):
    folder = tmp_path / "0007"
    folder.mkdir()
    (folder / "question.txt").write_text("Double it.\n-----Example-----\nInput\n2\n\nOutput\n4\n")
    (folder / "input_output.json").write_text(json.dumps({"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"]}))
    (folder / "solutions.json").write_text(json.dumps(["print(2 * int(input()))"]))
    for path in (tmp_path, folder):
        [problem] = load_apps(path)
        assert problem.task_id == "0007" and problem.solutions == ["print(2 * int(input()))"]
        assert problem.example_tests.cases == (StdioTest("2\n", "4\n"),)
        assert problem.hidden_tests.cases == (StdioTest("5\n", "10\n"),)


@pytest.mark.parametrize("line, error", [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ('{"task_id": 1, "text": "t", "code": "c"}', r"bad\.jsonl:2: missing field 'test_list'"),
    ('{"task_id": 1, "text": "t", "code": "c", "test_list": "assert 1"}', r"bad\.jsonl:2: field 'test_list' should be list"),
    ('{"task_id": 1, "text": "t", "code": "c", "test_list": ["assert ("]}', r"bad\.jsonl:2: field 'test_list' has an assert"),
    ('{"task_id": 1, "text": "t", "code": "c", "test_list": []}', r"bad\.jsonl:2: field 'test_list' should be a non-empty"),
    ('{"task_id": 1, "text": "t", "code": "c", "test_list": ["assert f(1) == 1"], "test_setup_code": "x = ("}',
     r"bad\.jsonl:2: field 'test_setup_code' does not parse"),
])
def test_malformed_mbpp_lines_name_file_line_and_field(tmp_path, line, error):
    path = tmp_path / "bad.jsonl"
    good = {"task_id": 0, "text": "t", "code": "c", "test_list": ["assert f(1) == 1"]}
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(DataError, match=error):
        load_mbpp(path)


def test_malformed_apps_and_humaneval_records(tmp_path):
    apps = tmp_path / "apps.jsonl"
    apps.write_text(json.dumps({"problem_id": 1, "question": "q", "input_output": '{"inputs": ["1"]}'}) + "\n")
    with pytest.raises(DataError, match=r"apps\.jsonl:1: field 'input_output' needs lists"):
        load_apps(apps)
    apps.write_text(json.dumps({"problem_id": 1, "question": "q", "input_output": '{"inputs": [], "outputs": []}'}) + "\n")
    with pytest.raises(DataError, match=r"apps\.jsonl:1: field 'input_output' has no tests"):
        load_apps(apps)
    humaneval = tmp_path / "he.jsonl.gz"
    with gzip.open(humaneval, "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "p", "entry_point": "f"}) + "\n")
    with pytest.raises(DataError, match=r"he\.jsonl\.gz:1: missing field 'test'"):
        load_humaneval(humaneval)
    with gzip.open(humaneval, "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "p", "entry_point": "f", "test": "pass",
                            "canonical_solution": ""}) + "\n")
    with pytest.raises(DataError, match=r"he\.jsonl\.gz:1: field 'test' defines no check"):
        load_humaneval(humaneval)


def test_mbpp_prompts_show_the_text_and_the_tests_in_the_zero_shot_format():
    problems = {p.task_id: p for p in load_mbpp(DATA / "mbpp.jsonl")}
    for problem in problems.values():
        text = prompt_text(problem)
        called = {ast.parse(a).body[0].test.left.func.id for a in problem.shown_tests
                  if isinstance(ast.parse(a).body[0].test, ast.Compare)
                  and isinstance(ast.parse(a).body[0].test.left, ast.Call)
                  and isinstance(ast.parse(a).body[0].test.left.func, ast.Name)}
        assert all(name in text for name in called), problem.task_id
        assert text.startswith(MBPP_INSTRUCTION.split("{question}")[0]) and text.endswith("### Response:")
        assert problem.prompt in text and all(a in text for a in problem.shown_tests)
    assert prompt_text(problems["11"]) == MBPP_INSTRUCTION.replace(
        "{question}", "\n" + problems["11"].prompt + "\nTest examples:\n" + "\n".join(problems["11"].shown_tests))
    # every assert is shown, so every test is an example test
    assert all(len(p.example_tests.cases) == len(p.shown_tests) and not p.hidden_tests.cases for p in problems.values())


def test_apps_prompts_follow_hendrycks():
    for problem in load_apps(DATA / "apps_train_coderl5.jsonl"):
        text = prompt_text(problem)
        form = "\nUse Call-Based format" if problem.entry_point else "\nUse Standard Input format"
        starter = "\n" + problem.starter_code if problem.starter_code else ""
        assert text == "\nQUESTION:\n" + problem.prompt + starter + form + "\nANSWER:\n"


class CharTokenizer:
    """One token per character, plus EOS: enough to test cutting to a token budget."""
    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text, add_special_tokens=True):
        return type("Encoding", (), {"input_ids": [ord(c) + 2 for c in text] + ([1] if add_special_tokens else [])})

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 2) for i in ids if i > 1)


def test_a_long_prompt_loses_its_question_never_its_tail():
    problem = Problem("1", "x" * 500, UnitTests(), UnitTests(), entry_point="f", dataset="apps")
    head, question, tail = prompt_parts(problem)
    text, cut = fit_prompt(CharTokenizer(), problem, 100)
    assert cut and text.startswith(head) and text.endswith(tail) and len(text) + 1 == 100
    assert fit_prompt(CharTokenizer(), problem, 1000) == (head + question + tail, False)
    texts, count = fit_prompts(CharTokenizer(), [problem, Problem("2", "short", UnitTests(), UnitTests())], 100)
    assert count == 1 and texts[1].endswith("\nUse Standard Input format\nANSWER:\n")


def test_the_shipped_data_sets_are_in_the_package_and_match_their_checksums(monkeypatch):
    monkeypatch.delenv("BCODER_DATA_DIR", raising=False)
    assert default_data_dir() == PACKAGED_DATA_DIR == Path(bcoder.data.__file__).parent / "files"
    recorded = recorded_checksums(PACKAGED_DATA_DIR)
    shipped = {p.name for p in PACKAGED_DATA_DIR.iterdir()} - {"README.md", "SHA256SUMS"}
    assert set(recorded) == shipped == {"mbpp.jsonl", "sanitized-mbpp.json", "HumanEval.jsonl.gz",
                                        "apps_train_coderl5.jsonl", "apps_train_stdin49_mapcoder.jsonl"}
    for name, digest in recorded.items():
        assert hashlib.sha256((PACKAGED_DATA_DIR / name).read_bytes()).hexdigest() == digest, name
        verify_checksum(PACKAGED_DATA_DIR / name)


def test_bcoder_data_dir_overrides_the_shipped_data(monkeypatch, tmp_path):
    monkeypatch.setenv("BCODER_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_a_changed_data_file_is_refused_on_load(tmp_path):
    for name in ("mbpp.jsonl", "SHA256SUMS"):
        shutil.copy(PACKAGED_DATA_DIR / name, tmp_path / name)
    assert len(load_mbpp(tmp_path / "mbpp.jsonl")) == 974
    lines = (tmp_path / "mbpp.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "mbpp.jsonl").write_text("".join(lines[:-1]))             # one problem lost
    with pytest.raises(DataError, match=r"mbpp\.jsonl: SHA-256 [0-9a-f]{64} differs from ccf64cea"):
        load_mbpp(tmp_path / "mbpp.jsonl")
    (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(DataError, match=r"SHA256SUMS:1: expected"):
        load_mbpp(tmp_path / "mbpp.jsonl")
    (tmp_path / "SHA256SUMS").unlink()                                      # a folder without checksums: read as is
    assert len(load_mbpp(tmp_path / "mbpp.jsonl")) == 973
