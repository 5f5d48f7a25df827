"""`python -m bcoder.data fetch`: the shipped data sets, laid out as the hub serves them, convert back
to the same problems; the command line stays light and fails in one line. Nothing is downloaded: a
fake hub in tmp_path replaces bcoder.data.fetch's `download` and `list_files`."""
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from bcoder.data import fetch
from bcoder.data.__main__ import main
from bcoder.data.apps import load_apps
from bcoder.data.humaneval import load_humaneval
from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import default_data_dir, read_jsonl

pyarrow = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

DATA = default_data_dir()
needs_data = pytest.mark.skipif(not (DATA / "mbpp.jsonl").exists(),
                                reason=f"data sets not found in {DATA} (set BCODER_DATA_DIR)")
MBPP_SPLIT_IDS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
                  "train": range(601, 975)}
HUMANEVAL_HUB_ORDER = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


class FakeHub:
    """Files of hub dataset repositories, in tmp_path; `downloads` lists (repo, filename, revision) asked for."""

    def __init__(self, root):
        self.root, self.files, self.downloads = root, {}, []

    def add(self, repo, filename, rows=None, text=None):
        """Adds a parquet file of `rows` (column order as given) or a text file."""
        path = self.root / repo / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if rows is not None:
            pq.write_table(pyarrow.Table.from_pylist(rows), path)
        else:
            path.write_text(text, encoding="utf-8")
        self.files[repo, filename] = path

    def download(self, repo, filename, revision):
        self.downloads.append((repo, filename, revision))
        if (repo, filename) not in self.files:
            raise fetch.FetchError(f"cannot download {filename} from dataset {repo}")
        return str(self.files[repo, filename])

    def list_files(self, repo, revision):
        return [name for r, name in self.files if r == repo] + [".gitattributes", "README.md"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    # Offline, with an empty cache: a real download that slipped past the fake fails.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                                # read when the hub is imported
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)     # in case it already was
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(fetch, "download", fake.download)
    monkeypatch.setattr(fetch, "list_files", fake.list_files)
    return fake


def jsonl_records(path):
    return [record for _, record in read_jsonl(path)]


def shuffled(rows, seed=0):
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def add_mbpp(hub, full, sanitized):
    """The shipped MBPP records as the hub's parquet files, each split shuffled (the hub's order is not ours)."""
    for config, records in (("full", full), ("sanitized", sanitized)):
        for split, ids in MBPP_SPLIT_IDS.items():
            rows = shuffled(r for r in records if r["task_id"] in ids)
            hub.add(fetch.MBPP_REPO, f"{config}/{split}-00000-of-00001.parquet", rows=rows)


def add_humaneval(hub, records):
    hub.add(fetch.HUMANEVAL_REPO, fetch.HUMANEVAL_FILE,
            rows=shuffled({name: r[name] for name in HUMANEVAL_HUB_ORDER} for r in records))


def apps_hub_row(record, input_output=None):
    """A loader-format APPS record as a row of the hub's JSONL: JSON text fields, `id` for `problem_id`."""
    return {"id": record["problem_id"], "question": record["question"], "solutions": json.dumps(record["solutions"]),
            "input_output": json.dumps(record["input_output"]) if input_output is None else input_output,
            "difficulty": record["difficulty"], "url": record["url"], "starter_code": record["starter_code"]}


def add_apps(hub, split, rows):
    hub.add(fetch.APPS_REPO, f"{split}.jsonl", text="".join(json.dumps(row) + "\n" for row in rows))


def shipped_mbpp():
    return jsonl_records(DATA / "mbpp.jsonl"), json.loads((DATA / "sanitized-mbpp.json").read_text(encoding="utf-8"))


@needs_data
def test_mbpp_round_trip(hub, tmp_path):
    full, sanitized = shipped_mbpp()
    add_mbpp(hub, full, sanitized)
    out = tmp_path / "out"
    assert fetch.fetch("mbpp", out, revision="abc123") == ["mbpp.jsonl", "sanitized-mbpp.json"]
    assert {revision for _, _, revision in hub.downloads} == {"abc123"}
    converted = jsonl_records(out / "mbpp.jsonl")
    assert len(converted) == 974
    assert converted == full and [list(r) for r in converted] == [list(r) for r in full]   # fields in order too
    assert load_mbpp(out / "mbpp.jsonl") == load_mbpp(DATA / "mbpp.jsonl")
    assert json.loads((out / "sanitized-mbpp.json").read_text(encoding="utf-8")) == sanitized


@needs_data
def test_mbpp_missing_split_names_the_repository(hub, tmp_path, capsys):
    full, sanitized = shipped_mbpp()
    add_mbpp(hub, full, sanitized)
    del hub.files[fetch.MBPP_REPO, "full/prompt-00000-of-00001.parquet"]
    assert main(["fetch", "mbpp", "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and fetch.MBPP_REPO in error and "full/prompt-*.parquet" in error
    assert not (tmp_path / "out" / "mbpp.jsonl").exists()


@needs_data
def test_humaneval_round_trip(hub, tmp_path):
    records = jsonl_records(DATA / "HumanEval.jsonl.gz")
    add_humaneval(hub, records)
    out = tmp_path / "out"
    fetch.fetch("humaneval", out)
    assert jsonl_records(out / "HumanEval.jsonl.gz") == records        # in task order, as shipped
    assert load_humaneval(out / "HumanEval.jsonl.gz") == load_humaneval(DATA / "HumanEval.jsonl.gz")
    header = (out / "HumanEval.jsonl.gz").read_bytes()[:10]
    # Neither a time nor a file name in the gzip header: the same problems give the same checksum.
    assert header[3] & 0x08 == 0 and header[4:8] == bytes(4)


@needs_data
def test_apps_round_trip_leaves_out_problems_without_tests(hub, tmp_path, capsys):
    train = jsonl_records(DATA / "apps_train_coderl5.jsonl")
    test = jsonl_records(DATA / "apps_train_stdin49_mapcoder.jsonl")[:3]
    untested = dict(train[0], problem_id=99999)
    add_apps(hub, "train", [apps_hub_row(r) for r in train[:2]] + [apps_hub_row(untested, input_output="")]
             + [apps_hub_row(r) for r in train[2:]])
    add_apps(hub, "test", [apps_hub_row(r) for r in test])
    out = tmp_path / "out"
    assert fetch.fetch("apps", out) == ["apps_train.jsonl", "apps_test.jsonl"]
    printed = capsys.readouterr().out
    assert "apps train: 5 problems; left out 1 without tests" in printed
    assert "apps test: 3 problems; left out 0 without tests" in printed
    assert jsonl_records(out / "apps_train.jsonl") == train
    assert load_apps(out / "apps_train.jsonl") == load_apps(DATA / "apps_train_coderl5.jsonl")
    assert jsonl_records(out / "apps_test.jsonl") == [dict(r, split="test") for r in test]


def test_failed_conversion_keeps_the_previous_file(hub, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "apps_train.jsonl").write_text("previous\n")
    add_apps(hub, "train", [{"id": 1, "question": "q"}])       # a row without input_output
    assert main(["fetch", "apps", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{fetch.APPS_REPO}/train.jsonl:1" in error and "input_output" in error
    assert (out / "apps_train.jsonl").read_text() == "previous\n"
    assert sorted(p.name for p in out.iterdir()) == ["apps_train.jsonl"]      # no temporary file left


@needs_data
def test_sha256sums_lists_each_written_file(hub, tmp_path):
    full, sanitized = shipped_mbpp()
    add_mbpp(hub, full, sanitized)
    add_humaneval(hub, jsonl_records(DATA / "HumanEval.jsonl.gz"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept\n")
    notes = hashlib.sha256(b"kept\n").hexdigest()
    (out / "SHA256SUMS").write_text(f"{notes}  notes.txt\n{'0' * 64}  mbpp.jsonl\n")
    assert main(["fetch", "mbpp", "humaneval", "--out", str(out)]) == 0
    names = ["HumanEval.jsonl.gz", "mbpp.jsonl", "notes.txt", "sanitized-mbpp.json"]
    assert (out / "SHA256SUMS").read_text() == "".join(
        f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}\n" for name in names)
    assert subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0


HEAVY_MODULES = ("torch", "transformers", "peft", "bcoder._C", "huggingface_hub", "pyarrow")


@pytest.mark.parametrize("argv", [["--help"], ["fetch", "--help"]])
def test_help_imports_nothing_heavy(argv):
    # Run as `python -m bcoder.data ...` would, then list the heavy modules that were imported.
    script = ("import runpy, sys\n"
              f"sys.argv = ['bcoder.data'] + {argv!r}\n"
              "try:\n"
              "    runpy.run_module('bcoder.data', run_name='__main__', alter_sys=True)\n"
              "except SystemExit as exit:\n"
              "    assert exit.code == 0, exit.code\n"
              f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m bcoder.data" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("argv", [["fetch", "imagenet", "--out", "x"], ["fetch", "mbpp"], ["fetch", "--out", "x"], []])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_missing_pyarrow_is_one_line(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)             # `import pyarrow` now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main(["fetch", "humaneval", "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install pyarrow" in error and "bcoder[fetch]" in error
    assert hub.downloads == []                                    # checked before downloading


def test_download_error_is_one_line(tmp_path):
    # The real download, offline with an empty cache: it fails at once, without the network.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = subprocess.run([sys.executable, "-m", "bcoder.data", "fetch", "humaneval", "--out", str(tmp_path / "out"),
                             "--revision", "v9"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert all(part in result.stderr for part in (fetch.HUMANEVAL_REPO, fetch.HUMANEVAL_FILE, "revision v9"))
    assert not (tmp_path / "out" / "HumanEval.jsonl.gz").exists()
