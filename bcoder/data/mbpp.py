"""MBPP (Austin et al. 2021): the program, then `test_setup_code` and each assert, run by the judge."""
import ast
import warnings

from bcoder.data.problems import DataError, Problem, read_jsonl, require
from bcoder.sandbox.schema import AssertTest, UnitTests, ValueTest


def mbpp_test(assertion):
    """`assert <expr> == <literal>` becomes a ValueTest, any other assert an AssertTest."""
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


def program_names(reference, tests, where):
    """The names the tests take from the program: those the reference solution defines at its top
    level (functions, classes, variables; builtin names included, as task 126's `sum`) that the
    tests read."""
    try:
        with warnings.catch_warnings():           # invalid escapes in some references' strings
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(reference)
    except SyntaxError as error:
        raise DataError(f"{where}: field 'code' does not parse: {error}") from None
    defined = set()
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
            defined.add(statement.name)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            defined |= {t.id for t in targets if isinstance(t, ast.Name)}
    read = {n.id for code in tests for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)}
    return tuple(sorted(defined & read))


def load_mbpp(path):
    """Problems of mbpp.jsonl. Its prompt shows every assert of `test_list`, so all are example tests."""
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        asserts = require(record, "test_list", list, where)
        if not asserts or not all(isinstance(a, str) for a in asserts):
            raise DataError(f"{where}: field 'test_list' should be a non-empty list of assert strings")
        setup = record.get("test_setup_code") or ""
        try:
            cases = [mbpp_test(assertion) for assertion in asserts]
        except SyntaxError as error:
            raise DataError(f"{where}: field 'test_list' has an assert that does not parse: {error}") from None
        try:
            ast.parse(setup)
        except SyntaxError as error:
            raise DataError(f"{where}: field 'test_setup_code' does not parse: {error}") from None
        reference = require(record, "code", str, where)
        names = program_names(reference, asserts + [setup], where)
        # The prompt shows every assert (the zero-shot format the paper follows): all are example tests.
        task_id = str(require(record, "task_id", (int, str), where))
        if not task_id.isdigit():
            raise DataError(f"{where}: field 'task_id' should be an integer (the split is by id), got {task_id!r}")
        problems.append(Problem(
            task_id=task_id,
            prompt=require(record, "text", str, where),
            example_tests=UnitTests(cases, setup, names=names),
            hidden_tests=UnitTests(names=names),
            solutions=[reference], dataset="mbpp", shown_tests=tuple(asserts)))
    return problems
