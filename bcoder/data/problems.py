"""The problem record shared by the MBPP, HumanEval and APPS loaders, JSONL reading, and where the
data sets are (the ones the package ships, checked against their SHA-256 on every read)."""
import gzip
import hashlib
import json
import os
import re
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


PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "files"
CHECKSUMS = "SHA256SUMS"


def default_data_dir():
    """$BCODER_DATA_DIR, else the data sets shipped in the package (bcoder/data/files)."""
    return Path(os.environ.get("BCODER_DATA_DIR") or PACKAGED_DATA_DIR)


def recorded_checksums(folder):
    """{file name: SHA-256} of the SHA256SUMS file in `folder` (`sha256sum`'s format), {} if it has none."""
    sums = Path(folder) / CHECKSUMS
    if not sums.is_file():
        return {}
    recorded = {}
    for number, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        entry = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if entry is None:
            raise DataError(f"{sums}:{number}: expected '<64 hex digits>  <file name>', got {line[:100]!r}")
        recorded[entry[2]] = entry[1]
    return recorded


def file_sha256(path):
    """The SHA-256 of a file, read in blocks (the full APPS files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path):
    """Raises DataError when a SHA256SUMS beside `path` records another hash for it: a data file
    changed since it was recorded (truncated, edited, or another release) would change every result
    computed from it without a word."""
    path = Path(path)
    expected = recorded_checksums(path.parent).get(path.name)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise DataError(f"{path}: SHA-256 {actual} differs from {expected} recorded in {path.parent / CHECKSUMS}: "
                        f"the file changed since it was recorded (restore it, or fetch it again)")


def read_jsonl(path):
    """Yields (line number, object) of a JSONL file (gzip if it ends in .gz), after verify_checksum."""
    verify_checksum(path)
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
