"""The tiny data set: deterministic, held-out compositions, references pass their tests in the
sandbox and wrong programs fail, and the local tokenizer gives programs back exactly."""
import collections
import re

import pytest

from bcoder.data.prompt import prompt_text
from bcoder.data.tiny import TinyConfig, _parts, compositions, make_tiny_problems, split_compositions
from bcoder.data.tokenizer import tiny_tokenizer
from bcoder.sandbox import CallTest, StdioTest, run_programs

MAX_PROMPT_TOKENS, MAX_PROGRAM_TOKENS = 64, 80     # the tiny preset generates up to 96 tokens


@pytest.fixture(scope="module", params=[1, 2], ids=["one-map", "two-maps"])
def maps(request):
    return request.param


@pytest.fixture(scope="module")
def problems(maps):
    return make_tiny_problems(TinyConfig(seed=0, n_train=1000, n_test=150, maps=maps))


def summary(problem):
    return (problem.prompt, problem.solutions, problem.tests)


def test_same_seed_same_problems_other_seed_other_problems(problems, maps):
    again = make_tiny_problems(seed=0, n_train=1000, n_test=150, maps=maps)
    assert [summary(p) for p in problems[0] + problems[1]] == [summary(p) for p in again[0] + again[1]]
    other = make_tiny_problems(seed=1, n_train=1000, n_test=150, maps=maps)
    assert {p.prompt for p in problems[0]} != {p.prompt for p in other[0]}
    assert split_compositions(0, 0.15, maps) != split_compositions(1, 0.15, maps)


def test_test_split_holds_only_compositions_unseen_in_training(problems, maps):
    train, test = problems
    assert len(train) == 1000 and len(test) == 150
    seen = {p.composition for p in train}
    assert not seen & {p.composition for p in test}
    train_compositions, test_compositions = split_compositions(0, 0.15, maps)
    assert set(train_compositions) | set(test_compositions) == set(compositions(maps))
    assert len(test_compositions) == round(0.15 * len(compositions(maps)))
    # Every part of a held-out composition is taught by some training composition.
    taught = {part for c in train_compositions for part in _parts(c)}
    assert all(set(_parts(c)) <= taught for c in test_compositions)


def test_problems_are_varied_and_well_formed(problems):
    train, test = problems
    for problem in train + test:
        assert problem.example_tests.cases and len(problem.hidden_tests.cases) == 6
        kinds = {type(case) for case in problem.tests.cases}
        assert kinds == ({CallTest} if problem.format == "call" else {StdioTest})
        assert bool(problem.entry_point) == (problem.format == "call")
        assert problem.entry_point in problem.prompt
        assert 2 <= len(problem.solutions) <= 3 and len(set(problem.solutions)) == len(problem.solutions)
        assert len({repr(case) for case in problem.tests.cases}) == len(problem.tests.cases)
    assert collections.Counter(p.format for p in train).keys() == {"call", "stdin"}
    assert {p.composition[0] for p in train} == {"int", "str"}
    assert len({p.prompt for p in train}) == len(train)
    # Edge cases among the hidden tests of every integer problem: the empty and an all-negative list.
    calls = [p for p in train if p.format == "call" and p.composition[0] == "int"]
    assert all([] in [c.args[0] for c in p.hidden_tests.cases] for p in calls)
    assert all(any(c.args[0] and max(c.args[0]) < 0 for c in p.hidden_tests.cases) for p in calls)


def test_two_maps_chain_half_the_problems_in_the_order_the_prompt_says():
    """maps=2: about half the problems of each split apply two distinct maps, neither the identity, and the
    prompt wraps the second map's phrase around the first's ("the squares of (the even numbers after adding
    3 to each)" is add 3, then square), as the references compute (test_references_pass... runs them)."""
    from bcoder.data.tiny import ELEMENTS

    train, test = make_tiny_problems(seed=0, n_train=1000, n_test=150, maps=2)
    assert compositions(1) == [c for c in compositions(2) if "+" not in c[1]]
    for split in (train, test):
        chained = [p for p in split if "+" in p.composition[1]]
        assert 0.4 < len(chained) / len(split) < 0.6
        for problem in chained:
            element = ELEMENTS[problem.composition[0]]
            first, second = (next(s for s in element.maps if s.name == n) for n in problem.composition[1].split("+"))
            assert first is not second and "identity" not in (first.name, second.name) and not first.makes

            def pattern(step, k, inner):
                return "|".join(re.escape(p).replace(re.escape("{n}"), inner).replace(re.escape("{k}"), str(k))
                                for p in step.phrases)

            inner = pattern(first, problem.params[0], ".+")
            assert re.search(pattern(second, problem.params[1], f"(?:{inner})"), problem.prompt), problem.prompt


def without_first_element(problem, program):
    """The program run on its input less the first element: wrong on some of the tests."""
    sequence = "xs" if problem.composition[0] == "int" else "words"
    lines = program.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if sequence in line)    # the def or the read line
    lines.insert(at + 1, ("    " if problem.format == "call" else "") + f"{sequence} = {sequence}[1:]\n")
    return "".join(lines)


def constant(problem):
    """A program that always gives the answer of the first example."""
    case = problem.example_tests.cases[0]
    if problem.format == "call":
        return f"def {problem.entry_point}(xs):\n    return {case.expected!r}\n"
    return f"print({case.output!r}, end='')\n"


def test_references_pass_example_and_hidden_tests_and_wrong_programs_fail(problems):
    train, test = problems
    sample = train[::20] + test[::10]
    assert {p.format for p in sample} == {"call", "stdin"}
    programs = [(p, s) for p in sample for s in p.solutions]
    checks = [(s, p.example_tests) for p, s in programs] + [(s, p.hidden_tests) for p, s in programs]
    results = run_programs([s for s, _ in checks], [t for _, t in checks], timeout=10, workers=2)
    assert [(s, r.outcome, r.message) for (s, _), r in zip(checks, results) if not r.passed] == []

    constants = run_programs([constant(p) for p in sample], [p.tests for p in sample], timeout=10, workers=2)
    assert [r.outcome for r in constants] == ["failed"] * len(sample)
    shortened = run_programs([without_first_element(p, s) for p, s in programs], [p.tests for p, _ in programs],
                             timeout=10, workers=2)
    assert all(r.outcome in ("passed", "failed") for r in shortened)
    assert sum(r.passed for r in shortened) <= 0.03 * len(programs)    # 0.6% over 1150 problems


def test_tokenizer_gives_every_program_back_and_fits_the_budget(problems, tmp_path):
    from transformers import AutoTokenizer

    train, test = problems
    tokenizer = tiny_tokenizer(train)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) < 400
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for problem in train + test:
        prompt = prompt_text(problem)
        assert len(tokenizer(prompt).input_ids) <= MAX_PROMPT_TOKENS
        for program in problem.solutions:
            ids = tokenizer(program).input_ids
            assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
            assert len(ids) <= MAX_PROGRAM_TOKENS
            assert tokenizer.decode(ids, skip_special_tokens=True) == program
            assert loaded(program).input_ids == ids
    # Whitespace outside the corpus survives too (tabs, runs of spaces, blank lines).
    odd = "def f(xs):\n\tif xs:  \n\n        return  xs\n"
    assert loaded.decode(loaded(odd).input_ids, skip_special_tokens=True) == odd
    batch = loaded([train[0].solutions[0], train[1].solutions[1]], padding=True, return_tensors=None)
    assert min(len(ids) for ids in batch.input_ids) == max(len(ids) for ids in batch.input_ids)


def test_asking_for_more_problems_than_exist_is_an_error():
    with pytest.raises(ValueError, match="distinct test problems"):
        make_tiny_problems(n_train=10, n_test=1000, test_fraction=0.005)     # 3 held-out compositions


def test_the_training_seed_leaves_the_tiny_data_alone():
    """--seed varies training only (so runs over seeds share one sft checkpoint and replay store);
    --data-seed makes another task."""
    from bcoder.config import PRESETS, with_values
    from bcoder.data.loading import load_split

    config = PRESETS["smoke"]
    task_ids = lambda c: [p.task_id for split in load_split(c.data) for p in split]
    solutions = lambda c: [p.solutions for split in load_split(c.data) for p in split]
    assert solutions(with_values(config, seed=7)) == solutions(config)
    assert task_ids(with_values(config, data_seed=1)) != task_ids(config)
