"""A CodeT5-format checkpoint through every stage: a RoBERTa-style byte-level BPE tokenizer (trained
here with `tokenizers`, wrapped as RobertaTokenizerFast, as CodeT5 ships its tokenizer) saved beside a
small random T5ForConditionalGeneration, given to `python -m bcoder.train --model`, on MBPP and APPS
problems with tiny step counts. Nothing is downloaded: the checkpoint is built in-process from the
real data sets' texts."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bcoder.data.problems import default_data_dir

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_dir()

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]   # CodeT5's ids: pad 0, <s> 1, </s> 2, unk 3, mask 4
MBPP_TASKS = set(range(11, 19)) | set(range(601, 617))          # 8 test tasks (11-510), 16 train tasks (601-974)
APPS_SOLUTIONS = 3                                               # reference solutions kept per APPS problem
STDIN_PROBLEMS = 3                                               # held-out problems from the stdin49 file (tests only)
TINY = ["--phi-steps", "2", "--theta-steps", "2", "--samples-per-problem", "1", "--eval-samples", "2",
        "--max-new-tokens", "24", "--phi-batch", "4", "--theta-batch", "4", "--workers", "2", "--curve-every", "0",
        "--max-prompt-tokens", "256", "--max-program-tokens", "256", "--log-every", "1", "--checkpoint-every", "2"]
ARTIFACTS = ("config.json", "replay.db", "phi", "theta", "eval.json", "eval_samples.jsonl", "report.md")
PROTOCOLS = ("unranked", "ranked", "filtered", "oracle")


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """Small problem files cut from the real ones: MBPP tasks 11-18 and 601-616; APPS's five CodeRL
    problems with at most APPS_SOLUTIONS solutions each; the STDIN_PROBLEMS stdin49 problems with the fewest tests."""
    directory = tmp_path_factory.mktemp("data")
    mbpp = [r for r in read_jsonl(DATA / "mbpp.jsonl") if r["task_id"] in MBPP_TASKS]
    apps = [{**r, "solutions": r["solutions"][:APPS_SOLUTIONS]} for r in read_jsonl(DATA / "apps_train_coderl5.jsonl")]
    stdin = sorted(read_jsonl(DATA / "apps_train_stdin49_mapcoder.jsonl"),
                   key=lambda r: len(r["input_output"]["inputs"]))[:STDIN_PROBLEMS]
    assert len(mbpp) == len(MBPP_TASKS) and len(apps) == 5 and len(stdin) == STDIN_PROBLEMS
    return {"mbpp": write_jsonl(directory / "mbpp_subset.jsonl", mbpp),
            "apps": write_jsonl(directory / "apps5.jsonl", apps),
            "stdin": write_jsonl(directory / "apps_stdin.jsonl", stdin)}


@pytest.fixture(scope="module")
def codet5_dir(data_files, tmp_path_factory):
    """A CodeT5-format checkpoint directory: RobertaTokenizerFast over a byte-level BPE trained on the
    problems' texts and solutions, and a random 2-layer T5 with its vocabulary, both save_pretrained."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast, T5Config, T5ForConditionalGeneration

    texts = []
    for record in read_jsonl(data_files["mbpp"]):
        texts += [record["text"], record["code"], *record["test_list"]]
    for name in ("apps", "stdin"):
        for record in read_jsonl(data_files[name]):
            texts += [record["question"], record.get("starter_code") or "", *(record.get("solutions") or [])]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=1500, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    raw = tmp_path_factory.mktemp("bpe")
    vocab_file, merges_file = bpe.save_model(str(raw))
    tokenizer = RobertaTokenizerFast(vocab_file, merges_file)   # <s> bos, </s> eos, <pad>, <unk>, <mask>: the defaults
    directory = tmp_path_factory.mktemp("codet5") / "codet5-tiny"
    config = T5Config(vocab_size=len(tokenizer), d_model=48, d_ff=96, d_kv=24, num_layers=2, num_decoder_layers=2,
                      num_heads=2, dropout_rate=0.0, feed_forward_proj="relu",
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.bos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train(codet5_dir, out, *args):
    result = subprocess.run([sys.executable, "-m", "bcoder.train", "--model", str(codet5_dir), "--out", str(out),
                             *TINY, *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"bcoder.train {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def runs(codet5_dir, data_files, tmp_path_factory):
    """get(name) -> the run directory of one of three full runs with --model, each made on first use:
    "mbpp" (its test tasks held out), "apps" (an id-sorted fifth held out) and "apps_stdin" (APPS
    with --eval-data on the stdin problems)."""
    root = tmp_path_factory.mktemp("runs")
    specs = {"mbpp": ["--data", f"mbpp:{data_files['mbpp']}"],
             "apps": ["--data", f"apps:{data_files['apps']}"],
             "apps_stdin": ["--data", f"apps:{data_files['apps']}", "--eval-data", f"apps:{data_files['stdin']}"]}
    made = {}

    def get(name):
        if name not in made:
            made[name] = train(codet5_dir, root / name, *specs[name])
        return made[name]

    return get


def test_checkpoint_is_codet5_format(codet5_dir):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(codet5_dir)
    model = T5ForConditionalGeneration.from_pretrained(codet5_dir, local_files_only=True)
    saved = json.loads((codet5_dir / "tokenizer_config.json").read_text())
    assert saved.get("tokenizer_class", "").startswith("RobertaTokenizer")
    assert type(tokenizer).__name__.startswith("RobertaTokenizer")
    assert len(tokenizer) == model.config.vocab_size
    assert 1000 <= len(tokenizer) <= 2000
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert model.config.decoder_start_token_id == model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("def f(x):\n\treturn x\r\n").input_ids        # byte-level: tabs and CRLF round-trip
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "def f(x):\n\treturn x\r\n"


def test_mbpp_prompts_show_the_tests_and_keep_the_tail(codet5_dir, data_files):
    from transformers import AutoTokenizer

    from bcoder.data.mbpp import load_mbpp
    from bcoder.data.prompt import prompt_parts, prompt_text
    from bcoder.sampling import fit_prompt

    tokenizer = AutoTokenizer.from_pretrained(codet5_dir)
    records = {str(r["task_id"]): r for r in read_jsonl(data_files["mbpp"])}
    problems = load_mbpp(data_files["mbpp"])
    assert {p.task_id for p in problems} == set(records)
    for problem in problems:
        record = records[problem.task_id]
        called = [n for n in re.findall(r"def (\w+)", record["code"]) if re.search(rf"\b{n}\(", " ".join(record["test_list"]))]
        assert called, problem.task_id
        text = prompt_text(problem)
        assert record["text"] in text and all(a in text for a in record["test_list"])
        assert all(name in text for name in called)
        assert text.endswith("### Response:")
        whole = len(tokenizer(text).input_ids)
        fitted, cut = fit_prompt(tokenizer, problem, whole)
        assert (fitted, cut) == (text, False)
        head, question, tail = prompt_parts(problem)
        assert question.startswith("\n" + record["text"]) and tail == "\n\n### Response:"
        budget = len(tokenizer(head + tail).input_ids) + 12       # room for a few of the question's tokens
        assert budget < whole
        fitted, cut = fit_prompt(tokenizer, problem, budget)
        assert cut and fitted.endswith("### Response:") and len(tokenizer(fitted).input_ids) <= budget
        assert fitted.startswith(head + "\n" + record["text"][:3])  # the question's start kept, its end cut


def check_run(run_dir, codet5_dir, held_out, trained_on):
    for name in ARTIFACTS:
        assert (run_dir / name).exists(), f"{run_dir}: no {name}"
    assert not (run_dir / "ckpt").exists()                    # --model: sft skipped, no checkpoint of its own
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == str(codet5_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    ran = [m["stage"] for m in metrics if "wall_seconds" in m]
    assert ran == ["sample", "phi", "theta", "control", "eval"]
    for stage in ("phi", "theta"):
        losses = [m["loss"] for m in metrics if m["stage"] == stage and "loss" in m]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), (stage, losses)
    sample = next(m for m in metrics if m["stage"] == "sample" and "programs" in m)
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["policies"] == ["ckpt", "theta", "control"] and report["settings"]["problems"] == len(held_out)
    for policy in ("ckpt", "theta"):
        for protocol in PROTOCOLS:
            assert protocol in report[policy], (policy, protocol)
            assert 0.0 <= report[policy][protocol]["pass@1"] <= 1.0
        assert report[policy]["problems"] == len(held_out)
        assert "greedy" in report[policy]
    samples = read_jsonl(run_dir / "eval_samples.jsonl")
    assert {s["task_id"] for s in samples} == set(held_out)
    assert len(samples) == 3 * 2 * len(held_out)              # three policies (theta, its control, ckpt), 2 each
    assert all(math.isfinite(s["return"]) for s in samples)
    text = (run_dir / "report.md").read_text()
    for words in trained_on:
        assert words in text, (words, text[:1500])
    assert str(codet5_dir) in text
    return sample


def test_mbpp_through_every_stage(runs, codet5_dir, data_files):
    run_dir = runs("mbpp")
    sample = check_run(run_dir, codet5_dir, [str(t) for t in sorted(MBPP_TASKS) if t <= 510],
                       [f"MBPP {data_files['mbpp']} (train tasks 601-974)", "held out: its test tasks 11-510"])
    assert sample["programs"] == 16                           # one per training task, 601-616
    from bcoder.replay import ReplayStore
    store = ReplayStore(run_dir / "replay.db", read_only=True)
    try:
        counts, truths = store.counts(), store.counts(is_ground_truth=True)
    finally:
        store.close()
    assert sum(counts.values()) == 16 + 16                    # the 16 references and the 16 samples
    assert truths["passed"] == 16                             # every reference passes its tests in the sandbox


def test_apps_through_every_stage(runs, codet5_dir, data_files):
    ids = sorted(str(r["problem_id"]) for r in read_jsonl(data_files["apps"]))
    sample = check_run(runs("apps"), codet5_dir, ids[:1], [f"APPS {data_files['apps']}", "held out: an id-sorted fifth"])
    assert sample["programs"] == 4


def test_apps_with_held_out_stdin_problems(runs, codet5_dir, data_files):
    ids = [str(r["problem_id"]) for r in read_jsonl(data_files["stdin"])]
    sample = check_run(runs("apps_stdin"), codet5_dir, ids, [f"APPS {data_files['apps']}", f"held out: APPS {data_files['stdin']}"])
    assert sample["programs"] == 5


def test_rank_scores_programs_with_the_given_checkpoint(runs, codet5_dir, data_files, tmp_path):
    run_dir = runs("mbpp")
    record = next(r for r in read_jsonl(data_files["mbpp"]) if r["task_id"] == 11)
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": 11, "program": record["code"], "tag": "reference"},
                                                       {"task_id": "11", "program": "def f(:\n", "tag": "broken"}])
    out = tmp_path / "ranked.jsonl"
    result = subprocess.run([sys.executable, "-m", "bcoder.rank", "--run", str(run_dir), "--samples", str(samples),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_jsonl(out)
    assert [r["tag"] for r in rows] == ["reference", "broken"]
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(codet5_dir)
    for row in rows:
        assert math.isfinite(row["return"]) and len(row["token_rewards"]) == len(row["tokens"])
        assert row["tokens"][-1] == tokenizer.eos_token
        assert row["return"] == pytest.approx(sum(row["token_rewards"]), abs=1e-3)
    assert rows[0]["tokens"] == tokenizer.convert_ids_to_tokens(tokenizer(record["code"]).input_ids)
    assert json.loads(result.stdout.strip().splitlines()[-1])["samples"] == 2


def test_rank_names_a_missing_checkpoint(runs, tmp_path):
    """A run whose --model directory is gone: rank ends with a message naming it, not a traceback."""
    run_dir = Path(shutil.copytree(runs("mbpp"), tmp_path / "moved"))
    config = json.loads((run_dir / "config.json").read_text())
    config["model"] = str(tmp_path / "gone")
    (run_dir / "config.json").write_text(json.dumps(config))
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": 11, "program": "def f(): pass"}])
    result = subprocess.run([sys.executable, "-m", "bcoder.rank", "--run", str(run_dir), "--samples", str(samples),
                             "--out", str(tmp_path / "out.jsonl")], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode != 0
    assert str(tmp_path / "gone") in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
