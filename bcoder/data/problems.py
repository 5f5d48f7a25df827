"""The problem record shared by the MBPP, HumanEval and APPS loaders, and JSONL reading."""
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bcoder.sandbox.schema import UnitTests


class DataError(ValueError):
    """A malformed data file; the message names the file, the line and the field."""


@dataclass
class Problem:
    """One problem. `example_tests` are those a model may see (MBPP's first assert, the APPS
    examples shown in the question); `hidden_tests` are the rest; `tests` is both."""
    task_id: str
    prompt: str
    example_tests: UnitTests
    hidden_tests: UnitTests
    solutions: list = field(default_factory=list)   # reference programs, complete sources
    entry_point: str = ""
    starter_code: str = ""
    difficulty: str = ""                            # APPS: introductory, interview or competition
    dataset: str = ""                               # mbpp | humaneval | apps | tiny: picks the prompt format
    shown_tests: tuple = ()                         # MBPP: the asserts its prompt shows

    @property
    def tests(self):
        return self.example_tests + self.hidden_tests

    def program(self, completion):
        """Full program for a model completion (HumanEval completes its prompt)."""
        return completion


def read_jsonl(path):
    """Yields (line number, object) of a JSONL file (gzip if it ends in .gz)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON: {error}") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def require(record, name, kind, where):
    """record[name], checked to be of type `kind`; `where` is "file:line" for the error."""
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}")
    if not isinstance(record[name], kind):
        raise DataError(f"{where}: field {name!r} should be {getattr(kind, '__name__', kind)}, "
                        f"got {type(record[name]).__name__}")
    return record[name]


def default_data_dir():
    """$BCODER_DATA_DIR, else shared/data beside the repository checkout."""
    return Path(os.environ.get("BCODER_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
