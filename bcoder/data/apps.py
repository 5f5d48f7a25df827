"""APPS (Hendrycks et al. 2021): standard-input and call-based problems, from JSONL (one
problem per line) or from the original per-problem folders (question.txt, input_output.json,
solutions.json, starter_code.py, metadata.json)."""
import json
from pathlib import Path

from bcoder.data.problems import DataError, Problem, read_jsonl, require
from bcoder.sandbox.schema import CallTest, StdioTest, UnitTests


def load_apps(path):
    """Problems of an APPS JSONL file, a folder of problem folders, or one problem folder."""
    path = Path(path)
    if not path.is_dir():
        return [apps_problem(record, f"{path}:{number}") for number, record in read_jsonl(path)]
    folders = [path] if (path / "question.txt").exists() else sorted(p for p in path.iterdir() if p.is_dir())
    return [apps_problem(read_folder(folder), str(folder)) for folder in folders]


def read_folder(folder):
    def text(name):
        file = folder / name
        return file.read_text(encoding="utf-8") if file.exists() else None

    metadata = json.loads(text("metadata.json") or "{}")
    return {"problem_id": folder.name, "question": text("question.txt") or "",
            "input_output": text("input_output.json"), "solutions": text("solutions.json") or "[]",
            "starter_code": text("starter_code.py") or "", "difficulty": metadata.get("difficulty", "")}


def _json_field(record, name, where):
    value = record.get(name)
    if isinstance(value, str):               # the folders and HF rows store JSON text
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: field {name!r} is not valid JSON: {error}") from None
    return value


def _squash(text):
    return "".join(text.split())


def apps_problem(record, where):
    question = require(record, "question", str, where)
    tests = _json_field(record, "input_output", where)
    if not isinstance(tests, dict) or not isinstance(tests.get("inputs"), list) \
            or not isinstance(tests.get("outputs"), list) or len(tests["inputs"]) != len(tests["outputs"]):
        raise DataError(f"{where}: field 'input_output' needs lists 'inputs' and 'outputs' of equal length")
    if not tests["inputs"]:
        raise DataError(f"{where}: field 'input_output' has no tests")
    solutions = _json_field(record, "solutions", where) or []
    if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
        raise DataError(f"{where}: field 'solutions' should be a list of program strings")
    shown = _squash(question)
    examples, hidden = [], []
    for i, (given, wanted) in enumerate(zip(tests["inputs"], tests["outputs"])):
        if tests.get("fn_name"):
            if not isinstance(given, list):
                raise DataError(f"{where}: field 'input_output' inputs[{i}] should be a list of arguments")
            case = CallTest(tests["fn_name"], given, wanted)
            texts = [json.dumps(x, separators=(",", ":")) for x in given + [wanted]]
        else:
            # Some APPS problems store an input or output as a list of lines.
            case = StdioTest(*("\n".join(x) if isinstance(x, list) else str(x) for x in (given, wanted)))
            texts = [case.input, case.output]
        is_example = all(_squash(t) and _squash(t) in shown for t in texts)
        (examples if is_example else hidden).append(case)
    return Problem(task_id=str(require(record, "problem_id", (int, str), where)), prompt=question,
                   example_tests=UnitTests(examples, apps=True), hidden_tests=UnitTests(hidden, apps=True),
                   solutions=solutions, entry_point=tests.get("fn_name") or "",
                   starter_code=record.get("starter_code") or "", difficulty=str(record.get("difficulty") or ""),
                   dataset="apps")
