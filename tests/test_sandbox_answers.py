"""The answer policies: `strict` (rewards, ranking) takes only the expected answer; `apps` keeps the
official APPS checker's fallbacks, which take wrong answers. Every reference passes under strict
(tests/test_data.py runs them all with the default policy)."""
import re

import pytest

from bcoder.data.apps import load_apps
from bcoder.data.problems import default_data_dir
from bcoder.sandbox import CallTest, Sandbox, SandboxConfig, StdioTest, UnitTests
from bcoder.sandbox.answers import call_matches, output_matches

SUM = UnitTests([StdioTest("1000000\n", "500000500000\n")], apps=True)
THIRD = UnitTests([StdioTest("3\n", "0.3333333333\n")], apps=True)
# name: (tests, a wrong program the APPS checker passes, honest programs)
ATTACKS = {
    "unsorted_output_for_a_sort": (
        UnitTests([StdioTest("4\n3 1 2 4\n", "1 2 3 4\n"), StdioTest("3\n9\n8\n7\n", "7\n8\n9\n")], apps=True),
        "n = int(input())\nprint(*[input() for _ in range(n)] if n == 3 else input().split(), sep='\\n' if n == 3 else ' ')",
        ["n = int(input())\nif n == 3:\n    print(*sorted(int(input()) for _ in range(n)), sep='\\n')\n"
         "else:\n    print(*sorted(map(int, input().split())))"]),
    "one_yes_and_one_no_line": (
        UnitTests([StdioTest("3\n4\n7\n10\n", "YES\nNO\nYES\n")], apps=True),
        "print('YES')\nprint('NO')",
        ["for _ in range(int(input())):\n    print('NO' if int(input()) % 2 else 'YES')"]),
    "off_by_one_under_a_relative_tolerance": (
        SUM, "n = int(input())\nprint(n * (n + 1) // 2 + 1)",
        ["n = int(input())\nprint(n * (n + 1) // 2)"]),
    "three_decimals_where_ten_are_expected": (
        THIRD, "print(f'{1 / int(input()):.3f}')",
        ["print(f'{1 / int(input()):.10f}')", "print(1 / int(input()))"]),
    "a_call_returning_the_first_expected_element": (
        UnitTests([CallTest("pair", [3], [3, 4])], apps=True), "def pair(x): return x",
        ["def pair(x): return [x, x + 1]", "def pair(x): return (x, x + 1)"]),
}


@pytest.fixture(scope="module")
def outcomes():
    """{policy: {name: (the cheat's outcome, [the honest programs' outcomes])}}."""
    programs, tests = [], []
    for suite, cheat, honest in ATTACKS.values():
        programs += [cheat, *honest]
        tests += [suite] * (1 + len(honest))
    out = {}
    for policy in ("apps", "strict"):
        with Sandbox(SandboxConfig(timeout=5, answers=policy), workers=2) as box:
            results = iter(box.run(programs, tests))
        out[policy] = {name: (next(results).outcome, [next(results).outcome for _ in honest])
                       for name, (_, _, honest) in ATTACKS.items()}
    return out


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_pass_under_apps_and_fail_under_strict(outcomes, name):
    honest = len(ATTACKS[name][2])
    assert outcomes["apps"][name] == ("passed", ["passed"] * honest)
    assert outcomes["strict"][name] == ("failed", ["passed"] * honest)


def test_strict_is_the_default_and_policies_are_named():
    assert SandboxConfig().answers == "strict"
    with pytest.raises(ValueError, match="answers must be one of strict, apps"):
        SandboxConfig(answers="lenient")


@pytest.mark.parametrize("got, expected", [
    ("1.505", "1.50"), ("1.495", "1.50"), ("1.5", "1.50"), ("1.50000001", "1.50"), ("2", "2.0"),
    ("0.3333333333333333", "0.3333333333"), ("0.30000000000000004", "0.3"), ("-1.25", "-1.250"),
    ("0.0", "-0.0"), ("-0", "-0.0"), ("0.04", "-0.0"), ("1e-05", "0.00001"), ("0.00001", "1e-05"),
    ("1.4e-5", "1e-05"), ("2.45E-3", "2.5e-3"), (".5", "0.5"), ("nan", "nan"),
    ("500000500000", "500000500000"), ("123456789012345678901234567890", "123456789012345678901234567890"),
    ("1 2   \n3\t\n\n\n", "1 2\n3"), ("  1    2\n3", "1 2\n3"), ("1 2\r\n3\r\n", "1 2\n3\n"),
    ("1 2\n3", "1 2\r\n3\r\n"), ("1\n2", "1\n2\n"), ("YES\n", "YES"), ("", "\n"),
])
def test_strict_accepts(got, expected):
    assert output_matches("strict", got, expected)


@pytest.mark.parametrize("got, expected", [
    ("1.5051", "1.50"), ("1.4949", "1.50"), ("1.6", "1.50"), ("0.333", "0.3333333333"),
    ("0.333333333", "0.3333333333"), ("-1.25", "1.25"), ("0.051", "-0.0"), ("1.6e-5", "1e-05"),
    ("500000500001", "500000500000"), ("500000500000.0", "500000500000"), ("5.000005e11", "500000500000"),
    ("-0", "0"), ("123456789012345678901234567891", "123456789012345678901234567890"),
    ("NaN", "nan"), ("nan", "1.5"), ("inf", "1e400"), ("1_5", "15.0"), ("0x1", "1.0"), ("1.5.", "1.5"),
    ("1\n2", "1 2"), ("1 2", "1\n2"), ("1\n\n2", "1\n2"), ("\n1", "1"), ("2 1", "1 2"), ("NO\nYES", "YES\nNO"),
    ("YES", "YES\nYES"), ("YES\nNO", "YES\nNO\nYES"), ("yes", "YES"), ("1 2", "1 2 2"), ("", "0"),
])
def test_strict_rejects(got, expected):
    assert not output_matches("strict", got, expected)


def test_a_huge_token_is_read_in_one_pass():
    """The pool compares in the caller's process: a regular expression that backtracks over a
    program's million-digit token would stall it for hours."""
    assert not output_matches("strict", "1" * 10 ** 6 + "x", "0.5")
    assert output_matches("strict", "0.5" + "0" * 10 ** 6, "0.5")


@pytest.mark.parametrize("result, expected, apps, strict", [
    ((3, 4), [3, 4], True, True),
    ([3, (4, (5,))], [3, [4, [5]]], True, True),
    ({"a": 1}, {"a": 1}, True, True),
    (3, [3, 4], True, False),
    ([3, 4], [[3, 4], [5]], True, False),
    # APPS wraps the return values of its Codewars problems in a list: 4184's references return False
    # for [False]. A one-element list reads either way under strict too.
    (False, [False], True, True),
    ([3], [[3]], True, True),
    ([4, 3], [3, 4], False, False),
    ([], [[]], True, True),
    (1, [], False, False),
    (500000500001, 500000500000, False, False),
])
def test_call_results(result, expected, apps, strict):
    assert (call_matches("apps", result, expected), call_matches("strict", result, expected)) == (apps, strict)


def off_by_one(text):
    """The output with its largest integer (by magnitude) one higher; None without an integer."""
    numbers = list(re.finditer(r"(?<![\w.])-?\d+(?![\w.])", text))
    if not numbers:
        return None
    largest = max(numbers, key=lambda m: abs(int(m[0])))
    return text[:largest.start()] + str(int(largest[0]) + 1) + text[largest.end():]


def reversed_order(text):
    """The lines in reverse order, and each line's tokens reversed."""
    return "\n".join(" ".join(reversed(line.split())) for line in reversed(text.strip("\n").split("\n"))) + "\n"


def duplicates_dropped(text):
    return "\n".join(dict.fromkeys(text.strip("\n").split("\n"))) + "\n"


def test_wrong_outputs_of_the_bundled_apps_problems():
    """Each bundled APPS standard-input test's expected output, changed into a wrong one: counts of
    the tests where the APPS checker takes it (measured: issue 20) and strict never does."""
    data = default_data_dir()
    problems = load_apps(data / "apps_train_coderl5.jsonl") + load_apps(data / "apps_train_stdin49_mapcoder.jsonl")
    assert len(problems) == 54
    cases = [case for problem in problems for case in problem.tests.cases if isinstance(case, StdioTest)]
    counts = {}
    for change in (off_by_one, reversed_order, duplicates_dropped):
        wrong = [(change(c.output), c.output) for c in cases]
        wrong = [(got, want) for got, want in wrong if got is not None and got.split() != want.split()]
        counts[change.__name__] = tuple(sum(output_matches(policy, got, want) for got, want in wrong)
                                        for policy in ("apps", "strict"))
    assert counts == {"off_by_one": (75, 0), "reversed_order": (138, 0), "duplicates_dropped": (36, 0)}
