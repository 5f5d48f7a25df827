"""How a program's answer is compared with the expected one: a named policy (`SandboxConfig.answers`).

`strict` (the default: training rewards, ranking). RL learns whatever earns reward, so an answer
passes only if it is the expected answer:
  - A call's result must equal the whole expected value (Python's ==, with tuples read as lists:
    JSON, the expected values' format, has no tuples). One exception: a one-element list also
    accepts its element, since APPS stores the return value of its Codewars problems wrapped in
    a list (`[false]` for False; 4184's references return False); any longer list must be
    returned whole, so returning 3 for [3, 4] is wrong.
  - Standard output is compared line by line and, within a line, token by token. Text is split
    into lines at "\\n" and each line into tokens at whitespace (as str.split() reads it), so
    leading, trailing and repeated whitespace within a line, and a "\\r" before the "\\n", do not
    matter; empty lines at the end do not matter; every other line does, empty ones included. A
    token on the wrong line, a missing, extra, reordered or repeated line is wrong.
  - A token matches when it is equal as text, or when the expected token is written as a decimal
    (digits after a point, or an exponent: "0.5", "-0.0", "1.50", "2.5e-3", "1e-05") and the
    output's token is a number (digits with an optional sign, point and exponent; no "nan",
    "inf" or "_") within half a unit of the expected token's last digit, plus 2**-50 of its
    magnitude for binary rounding: "1.50" accepts [1.495, 1.505], "0.3333333333" needs ten
    correct decimals, "2.5e-3" accepts [0.00245, 0.00255]. Any other expected token (an
    integer such as 500000500000, "nan", a word) must be equal as text.

`apps`: the official APPS checker (testing_util.py) and its fallbacks, for numbers comparable
with published ones. They accept wrong answers and are not for rewards: a call result equal to
the first element of any expected list; output lines compared as sets of token sets (any order,
duplicates dropped), also after rounding each token to 3 decimals; all-numeric output within a
relative 1e-5 (an off-by-one on 500000500000 passes).

Standard library only: the judge imports this module.
"""
import math
import re

POLICIES = ("strict", "apps")
# An expected token written as a decimal: digits after a point (group 1 or 2) or an exponent (group 3).
DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.(\d+))?|\.(\d+))(?:[eE]([+-]?\d{1,4}))?")
# A token of the output read as a number. (No two parts can match the same digits: a program's token of
# a million digits and an "x" must not cost the pool a backtracking search.)
NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def call_matches(policy, output, expected):
    """Whether a call's result is the expected value under `policy`."""
    output = _lists(output)
    if output == expected:
        return True
    unwrapped = isinstance(expected, list) and (len(expected) == 1 or policy == "apps" and len(expected) > 1)
    return unwrapped and output == expected[0]


def output_matches(policy, output, expected):
    """Whether a standard-input program's output is the expected output under `policy`."""
    return (strict_output_matches if policy == "strict" else apps_output_matches)(output, expected)


def _lists(value):
    if isinstance(value, (list, tuple)):
        return [_lists(x) for x in value]
    return value


def strict_output_matches(output, expected):
    got, want = _lines(output), _lines(expected)
    return len(got) == len(want) and all(
        len(g) == len(w) and all(map(token_matches, g, w)) for g, w in zip(got, want))


def _lines(text):
    lines = [line.split() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def token_matches(got, expected):
    if got == expected:
        return True
    decimal = DECIMAL.fullmatch(expected)
    if decimal is None or not (decimal[1] or decimal[2] or decimal[3]) or NUMBER.fullmatch(got) is None:
        return False
    places = len(decimal[1] or decimal[2] or "") - int(decimal[3] or 0)
    want = float(expected)
    tolerance = 0.5 * 10.0 ** min(-places, 308) + abs(want) * 2 ** -50      # (min: no overflow)
    return math.isfinite(want) and abs(float(got) - want) <= tolerance


def apps_output_matches(output, expected):
    """APPS standard-output comparison: stripped non-empty lines equal; else every line a
    number and all close (as numpy.allclose); else equal as sets of per-line token sets,
    also with tokens read as numbers rounded to 3 decimals (the harness's own fallbacks)."""
    got = [line.strip() for line in output.splitlines() if line.strip()]
    want = [line.strip() for line in expected.splitlines() if line.strip()]
    if got == want:
        return True
    try:
        if len(got) == len(want) and all(
                abs(a - b) <= 1e-8 + 1e-5 * abs(b)
                for a, b in zip(map(float, got), map(float, want))):
            return True
    except ValueError:
        pass
    if {frozenset(line.split()) for line in got} == {frozenset(line.split()) for line in want}:
        return True
    try:
        def rounded(lines):
            return {frozenset(round(float(t), 3) for t in line.split()) for line in lines}
        return rounded(got) == rounded(want)
    except (ValueError, OverflowError):
        return False
