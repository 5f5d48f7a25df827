"""MBPP (Austin et al. 2021): the program, then `test_setup_code`, then each assert."""
import ast

from bcoder.data.problems import DataError, Problem, read_jsonl, require
from bcoder.sandbox.schema import AssertTest, UnitTests, ValueTest


def mbpp_test(assertion):
    """`assert <expr> == <literal>` becomes a ValueTest judged by the evaluator; any other
    assert an AssertTest run after the program."""
    tree = ast.parse(assertion)
    statement = tree.body[0] if len(tree.body) == 1 else None
    if isinstance(statement, ast.Assert) and isinstance(statement.test, ast.Compare) \
            and len(statement.test.ops) == 1 and isinstance(statement.test.ops[0], ast.Eq):
        sides = [statement.test.left, statement.test.comparators[0]]
        for expr, expected in (sides, sides[::-1]):
            try:
                value = ast.literal_eval(expected)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            return ValueTest(ast.get_source_segment(assertion, expr), value)
    return AssertTest(assertion)


def load_mbpp(path):
    """Problems of mbpp.jsonl; the first assert of `test_list` is the example test."""
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        asserts = require(record, "test_list", list, where)
        setup = record.get("test_setup_code") or ""
        try:
            cases = [mbpp_test(assertion) for assertion in asserts]
        except SyntaxError as error:
            raise DataError(f"{where}: field 'test_list' has an assert that does not parse: {error}") from None
        problems.append(Problem(
            task_id=str(require(record, "task_id", (int, str), where)),
            prompt=require(record, "text", str, where),
            example_tests=UnitTests(cases[:1], setup),
            hidden_tests=UnitTests(cases[1:], setup),
            solutions=[require(record, "code", str, where)]))
    return problems
