"""Problems by name: a `--data` spec with its train and held-out split, a problems file of a
known format, and files of program samples."""
from bcoder.data.apps import load_apps
from bcoder.data.humaneval import load_humaneval
from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import DataError, read_jsonl
from bcoder.data.tiny import make_tiny_problems

LOADERS = {"mbpp": load_mbpp, "humaneval": load_humaneval, "apps": load_apps}


MBPP_TRAIN, MBPP_TEST = range(601, 975), range(11, 511)   # the standard split (tasks 511-600: validation)


def load_split(data):
    """(train, held-out) problems of a run's data section (bcoder.config.DataConfig): data.train names the
    training problems ("tiny", made from data.seed, n_train, n_test and tiny_maps; "mbpp:PATH", its train tasks 601-974;
    "apps:PATH", every problem there: APPS's train split), data.eval the held-out ones ("mbpp:PATH", its test
    tasks 11-510;
    "apps:PATH", every problem there: APPS's test split). Without eval_data they come from --data:
    tiny's test set, MBPP's test tasks, or for APPS an id-sorted fifth held out of the given problems
    (a sample's split, not the paper's)."""
    if data.train == "tiny":
        if data.eval:
            raise DataError("--eval-data goes with --data mbpp:PATH or apps:PATH, not the tiny set")
        return make_tiny_problems(seed=data.seed, n_train=data.n_train, n_test=data.n_test, maps=data.tiny_maps)
    kind, path = _spec(data.train, "--data")
    train = load_mbpp(path) if kind == "mbpp" else load_apps(path)
    if data.eval:
        eval_kind, eval_path = _spec(data.eval, "--eval-data")
        test = load_mbpp(eval_path) if eval_kind == "mbpp" else load_apps(eval_path)
        if eval_kind == "mbpp":
            test = [p for p in test if int(p.task_id) in MBPP_TEST]
    elif kind == "mbpp":
        test = [p for p in train if int(p.task_id) in MBPP_TEST]
    else:
        order = sorted(train, key=lambda p: str(p.task_id))
        cut = max(1, len(order) // 5)
        train, test = order[cut:], order[:cut]
    if kind == "mbpp":
        train = [p for p in train if int(p.task_id) in MBPP_TRAIN]
    if not train or not test:
        raise DataError(f"{data.train} {data.eval}: empty split (train {len(train)}, held-out {len(test)} "
                        f"problems)")
    return train, test


def split_description(data):
    """In words: where a run's training and held-out problems come from."""
    if data.train == "tiny":
        chains = "" if data.tiny_maps == 1 else f", chains of up to {data.tiny_maps} maps"
        return f"the tiny set (seed {data.seed}{chains}): {data.n_train} training and {data.n_test} held-out problems"
    kind, path = _spec(data.train, "--data")
    if data.eval:
        eval_kind, eval_path = _spec(data.eval, "--eval-data")
        held_out = f"{eval_kind.upper()} {eval_path}" + (" (test tasks 11-510)" if eval_kind == "mbpp" else "")
    else:
        held_out = ("its test tasks 11-510" if kind == "mbpp"
                    else "an id-sorted fifth of it (not the paper's split)")
    trained = f"{kind.upper()} {path}" + (" (train tasks 601-974)" if kind == "mbpp" else "")
    return f"trained on {trained}; held out: {held_out}"


def _spec(spec, flag):
    kind, _, path = spec.partition(":")
    if kind not in ("mbpp", "apps") or not path:
        raise DataError(f"{flag} must be 'tiny', 'mbpp:PATH' or 'apps:PATH', got {spec!r}")
    return kind, path


def load_problems_file(path, data_format):
    """{task_id: Problem} of a problems file in one of LOADERS' formats."""
    if data_format not in LOADERS:
        raise DataError(f"the format of {path} must be one of {sorted(LOADERS)}, got {data_format!r}")
    return {p.task_id: p for p in LOADERS[data_format](path)}


def problems_of(data, problems_file=None, data_format=None):
    """{task_id: Problem}: a problems file (in `data_format`, default that of the run's data section), else
    the run's own problems (train and held-out)."""
    if problems_file:
        return load_problems_file(problems_file, data_format or data.train.partition(":")[0])
    train, test = load_split(data)
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
