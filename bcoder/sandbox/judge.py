"""Evaluator side: turns tests into worker runs, and worker reports into judged results.

Expected values and outputs never enter the program's process: the worker reports what
the program produced, as plain data, and the comparisons happen here.
"""
import ast

from bcoder.sandbox.schema import AssertTest, ProgramResult, StdioTest, TestResult, ValueTest
from bcoder.sandbox.worker import decode

SHOWN = 300  # characters of a value shown in a failure message


class _PlainComparisons(ast.NodeTransformer):
    """Makes compares and truth tests act on `__plain__` copies (builtin types only), so a
    program's object cannot pass an assert through its own `__eq__` or `__bool__`."""

    @staticmethod
    def plain(node):
        return ast.Call(ast.Name("__plain__", ast.Load()), [node], [])

    def visit_Assert(self, node):
        node.test = self.plain(_PlainOperands().visit(node.test))
        return node


class _PlainOperands(ast.NodeTransformer):
    def visit_Compare(self, node):
        self.generic_visit(node)
        if not any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            node.left = _PlainComparisons.plain(node.left)
            node.comparators = [_PlainComparisons.plain(c) for c in node.comparators]
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = _PlainComparisons.plain(node.operand)
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        node.values = [_PlainComparisons.plain(v) for v in node.values]
        return node


def harden(code):
    """Test code with its asserts rewritten by _PlainComparisons (unchanged if it does not parse)."""
    if not code:
        return code
    try:
        tree = _PlainComparisons().visit(ast.parse(code))
    except (SyntaxError, ValueError):
        return code
    return ast.unparse(ast.fix_missing_locations(tree))


def worker_runs(program, tests):
    """The runs of one program: one per stdin test, else one running every probe in turn."""
    if tests.cases and isinstance(tests.cases[0], StdioTest):
        return [{"source": program, "setup": "", "probes": [], "stdin": case.input, "apps": tests.apps}
                for case in tests.cases]
    probes = []
    for case in tests.cases:
        if isinstance(case, ValueTest):
            probes.append(["eval", case.expr])
        elif isinstance(case, AssertTest):
            probes.append(["exec", harden(case.code)])
        else:
            probes.append(["call", case.fn_name, list(case.args)])
    return [{"source": program, "setup": harden(tests.setup), "probes": probes, "stdin": None,
             "apps": tests.apps}]


def judge(tests, reports):
    """ProgramResult for the worker reports of one program's runs."""
    last = reports[-1]
    result = ProgramResult(outcome="passed", seconds=sum(r["seconds"] for r in reports),
                           peak_memory=max(r["memory"] for r in reports),
                           stdout=last["stdout"], stderr=last["stderr"])
    if last["status"] in ("compile_error", "program_error"):
        result.outcome = "compile_error" if last["status"] == "compile_error" else "runtime_error"
        result.error_type, result.message = last["error_type"], last["message"]
    if tests.cases and isinstance(tests.cases[0], StdioTest):
        result.tests = [_judge_stdio(case, reports[i]) if i < len(reports) else TestResult("not_run")
                        for i, case in enumerate(tests.cases)]
    else:
        result.tests = [_judge_probe(case, last, i) for i, case in enumerate(tests.cases)]
    if result.outcome == "passed":
        statuses = [test.status for test in result.tests]
        for status, outcome in (("error", "runtime_error"), ("timeout", "runtime_error"),
                                ("not_run", "runtime_error"), ("failed", "failed")):
            if status in statuses:
                first = result.tests[statuses.index(status)]
                result.outcome, result.error_type, result.message = outcome, first.error_type, first.message
                break
    return result


def _run_failure(report):
    """TestResult for a test that a run ended before reaching."""
    status = {"timeout": "timeout", "crash": "error"}.get(report["status"], "not_run")
    return TestResult(status, report["error_type"], report["message"])


def _judge_probe(case, report, index):
    if report["status"] in ("compile_error", "program_error"):
        return TestResult("not_run")
    if index >= len(report["probes"]):
        first_missing = index == len(report["probes"])
        return _run_failure(report) if first_missing else TestResult("not_run")
    outcome = report["probes"][index]
    if outcome[0] != "ok":
        return TestResult(outcome[0], outcome[1], outcome[2])
    if isinstance(case, AssertTest):
        return TestResult("passed")
    value = decode(outcome[1])
    if isinstance(case, ValueTest):
        matches = value == case.expected
    else:
        matches = apps_call_matches(value, case.expected)
    if matches:
        return TestResult("passed")
    return TestResult("failed", "WrongAnswer",
                      f"expected {repr(case.expected)[:SHOWN]}, got {repr(value)[:SHOWN]}")


def _judge_stdio(case, report):
    if report["status"] != "ok":
        return _run_failure(report) if report["status"] in ("timeout", "crash") else \
            TestResult("error", report["error_type"], report["message"])
    if report["stdout_overflow"]:
        return TestResult("error", "OutputLimitExceeded", "the program wrote more output than the limit")
    if apps_output_matches(report["stdout"], case.output):
        return TestResult("passed")
    return TestResult("failed", "WrongAnswer",
                      f"expected {case.output[:SHOWN]!r}, got {report['stdout'][:SHOWN]!r}")


def _lists(value):
    if isinstance(value, (list, tuple)):
        return [_lists(x) for x in value]
    return value


def apps_call_matches(output, expected):
    """APPS call-based comparison: tuples read as lists (JSON has no tuples), and an expected
    list also accepts its first element (APPS wraps some outputs in a list)."""
    output = _lists(output)
    return output == expected or (isinstance(expected, list) and len(expected) > 0 and output == expected[0])


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
