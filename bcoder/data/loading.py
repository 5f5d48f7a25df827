"""Problems by name: a `--data` spec with its train and held-out split, a problems file of a
known format, and files of program samples."""
from bcoder.data.apps import load_apps
from bcoder.data.humaneval import load_humaneval
from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import DataError, read_jsonl
from bcoder.data.tiny import make_tiny_problems

LOADERS = {"mbpp": load_mbpp, "humaneval": load_humaneval, "apps": load_apps}


def load_split(config):
    """(train, held-out) problems of a run's `--data` spec (config.data): "tiny" (generated from
    config.seed, n_train, n_test), "mbpp:PATH" (the standard split: tasks 601-974 train, 11-510
    test) or "apps:PATH" (a sample of APPS's train split: an id-sorted fifth held out)."""
    data = config.data
    if data == "tiny":
        return make_tiny_problems(seed=config.seed, n_train=config.n_train, n_test=config.n_test)
    kind, _, path = data.partition(":")
    if kind not in ("mbpp", "apps") or not path:
        raise DataError(f"--data must be 'tiny', 'mbpp:PATH' or 'apps:PATH', got {data!r}")
    if kind == "mbpp":
        problems = load_mbpp(path)
        train = [p for p in problems if 601 <= int(p.task_id) <= 974]
        test = [p for p in problems if 11 <= int(p.task_id) <= 510]
    else:
        order = sorted(load_apps(path), key=lambda p: str(p.task_id))
        cut = max(1, len(order) // 5)
        train, test = order[cut:], order[:cut]
    if not train or not test:
        raise DataError(f"{data}: empty split (train {len(train)}, test {len(test)} problems)")
    return train, test


def load_problems_file(path, data_format):
    """{task_id: Problem} of a problems file in one of LOADERS' formats."""
    if data_format not in LOADERS:
        raise DataError(f"the format of {path} must be one of {sorted(LOADERS)}, got {data_format!r}")
    return {p.task_id: p for p in LOADERS[data_format](path)}


def problems_of(config, problems_file=None, data_format=None):
    """{task_id: Problem}: a problems file (in `data_format`, default that of the run's data), else the
    run's own problems (train and held-out)."""
    if problems_file:
        return load_problems_file(problems_file, data_format or config.data.partition(":")[0])
    train, test = load_split(config)
    return {p.task_id: p for p in train + test}


def read_samples(path, problems):
    """(task_id, program) per sample line of a JSONL file: {"task_id", "program"} or {"task_id",
    "completion"} (appended to the prompt for HumanEval); unknown task ids and bad lines are errors
    naming the file and line."""
    samples = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        if "task_id" not in record:
            raise DataError(f"{where}: missing field 'task_id'")
        task_id = str(record["task_id"])
        if task_id not in problems:
            raise DataError(f"{where}: field 'task_id': unknown task id {task_id!r}")
        if isinstance(record.get("program"), str):
            program = record["program"]
        elif isinstance(record.get("completion"), str):
            program = problems[task_id].program(record["completion"])
        else:
            raise DataError(f"{where}: needs a string field 'program' or 'completion'")
        samples.append((task_id, program))
    return samples
