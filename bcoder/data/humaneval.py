"""HumanEval (Chen et al. 2021): prompt + completion; the judge runs the `test` code and
check(entry_point), with the prompt's own helpers (poly, encode_cyclic, ...) from the problem."""
import ast

from bcoder.data.problems import DataError, Problem, default_data_dir, read_jsonl, require
from bcoder.sandbox.schema import AssertTest, UnitTests


class HumanEvalProblem(Problem):
    def program(self, completion):
        return self.prompt + completion


def prompt_helpers(prompt, entry_point, where):
    """The prompt's code without the entry point's stub: the helpers `check` may call."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError as error:
        raise DataError(f"{where}: field 'prompt' does not parse: {error}") from None
    tree.body = [s for s in tree.body if not (isinstance(s, ast.FunctionDef) and s.name == entry_point)]
    return ast.unparse(tree)


def load_humaneval(path=None):
    """Problems of HumanEval.jsonl(.gz), by default the shipped one. No example tests: `check` is one
    hidden test."""
    path = path or default_data_dir() / "HumanEval.jsonl.gz"
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        prompt = require(record, "prompt", str, where)
        entry_point = require(record, "entry_point", str, where)
        test = require(record, "test", str, where)
        if "def check(" not in test:
            raise DataError(f"{where}: field 'test' defines no check(candidate)")
        problems.append(HumanEvalProblem(
            task_id=require(record, "task_id", str, where),
            prompt=prompt,
            example_tests=UnitTests(),
            hidden_tests=UnitTests([AssertTest(f"check({entry_point})")],
                                   prompt_helpers(prompt, entry_point, where) + "\n" + test, names=(entry_point,)),
            solutions=[prompt + require(record, "canonical_solution", str, where)],
            entry_point=entry_point, dataset="humaneval"))
    return problems
