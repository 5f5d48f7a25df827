"""The repository's shape: imports only go down, the few function-local imports are the documented ones,
no file points outside the repository, no top-level folder shadows an installed distribution, every
docs/method.md link lands on a heading, and the README's layout section is the tree."""
import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Function-local imports, each for a reason stated where it stands.
LOCAL_IMPORTS = {
    ("bcoder/__init__.py", "importlib"),              # the loss API loads on first use: `import bcoder` stays light
    ("bcoder/sandbox/__init__.py", "importlib"),      # the sandbox worker imports this package: it stays small
    ("bcoder/sandbox/__init__.py", "bcoder.sandbox.pool"),
    ("bcoder/sandbox/program.py", "_sitebuiltins"),   # every module the worker holds slows each fork
    ("bcoder/sandbox/program.py", "ast"),
    ("bcoder/ops.py", "bcoder.kernels"),              # Triton is an optional dependency
    ("bcoder/models/causal.py", "peft"),              # 2 s to import; only LoRA Q-models need it
    ("bcoder/data/fetch.py", "huggingface_hub"),      # only fetching needs the hub and parquet
    ("bcoder/data/fetch.py", "pyarrow"),
    # A command reads its flags before torch, transformers and the models load: --help and a flag error
    # answer at once, and judging given samples never loads them (tests/test_cli.py)
    ("bcoder/train.py", "bcoder.stages"),
    ("bcoder/evaluate.py", "bcoder.stages"),
    ("bcoder/rank.py", "bcoder.sampling"),
    ("bcoder/rank.py", "bcoder.scoring"),
    ("bcoder/run.py", "torch"),                       # resume state only: the report reads run directories without it
    ("bcoder/report.py", "matplotlib"),               # matplotlib and scipy take seconds; only drawing needs them
    ("bcoder/report.py", "numpy"),
    ("bcoder/report.py", "scipy"),
}
OUTSIDE = re.compile(r"\bSPEC\b|SPEC\.md|DESIGN\.md|\.\./shared|/work/|\.\./\.\.")


def tracked_files():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if (REPO / name).is_file()]


def bcoder_modules():
    """{module name: path} of the package's Python files (bcoder.kernels is kernels/)."""
    modules = {}
    for path in sorted((REPO / "bcoder").rglob("*.py")) + sorted((REPO / "kernels").glob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        parts = ["bcoder", "kernels", *relative.parts[1:]] if relative.parts[0] == "kernels" else list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports(path):
    """[(module, line, inside a function)] of a file's imports (from-imports: the module and, where the
    imported name is itself a module, the module of that name)."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, child.lineno, inside))
                found.extend((f"{child.module}.{alias.name}", child.lineno, inside) for alias in child.names)
            visit(child, inside)

    visit(tree, False)
    return found


def test_imports_only_go_down():
    """No cycle among the module-level imports (a module's own packages, imported before it by Python,
    and the lazy function-local imports aside), and nothing imports the orchestrator, bcoder.train."""
    modules = bcoder_modules()
    graph = {name: {target for target, _, inside in imports(path)
                    if target in modules and not inside and not name.startswith(target + ".") and target != name}
             for name, path in modules.items()}
    state, cycle = {}, []

    def walk(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle.extend(stack[stack.index(target):] + [target])
            elif target not in state:
                walk(target, stack + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycle == []
    assert not any("bcoder.train" in targets for name, targets in graph.items() if name != "bcoder.train")


def test_function_local_imports_are_the_documented_ones():
    local = {(str(path.relative_to(REPO)), target.split(".")[0] if target.split(".")[0] != "bcoder" else target)
             for path in bcoder_modules().values() for target, _, inside in imports(path) if inside}
    # from-imports list the module and module.name: keep the module's own entry
    local = {(path, target) for path, target in local
             if not any(target.startswith(other + ".") for p, other in local if p == path)}
    assert local == LOCAL_IMPORTS


def climbs_out(path, line):
    """Whether a line of `path` climbs above the repository's root from the file's own place:
    `Path(__file__).parents[N]` or `.parent` chains that go past it."""
    depth = len(path.relative_to(REPO).parts)  # parents[depth - 1] is the root
    if any(int(n) >= depth for n in re.findall(r"\bparents\[(\d+)\]", line)):
        return True
    return any(len(chain) // len(".parent") > depth for chain in re.findall(r"(?:\.parent\b)+", line))


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if path.suffix in (".png", ".so", ".whl", ".gz") or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) or climbs_out(path, line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert offenders == []


def test_the_outside_check_catches_a_climb_past_the_root():
    inside, outside = REPO / "bcoder" / "data" / "problems.py", REPO / "tests" / "x.py"
    assert climbs_out(inside, 'Path(__file__).resolve().parents[3] / "shared" / "data"')
    assert climbs_out(outside, "Path(__file__).parent.parent.parent")
    assert not climbs_out(inside, "Path(__file__).resolve().parents[2]")       # the root itself
    assert not climbs_out(outside, "Path(__file__).resolve().parent.parent")
    assert OUTSIDE.search('open("../../data/mbpp.jsonl")')


def top_level_folders():
    """The repository's own top-level folders (tracked files), which the checkout's root puts on sys.path
    for `python -m` and pytest."""
    return sorted({path.relative_to(REPO).parts[0] for path in tracked_files()
                   if len(path.relative_to(REPO).parts) > 1 and not path.relative_to(REPO).parts[0].startswith(".")})


def test_no_top_level_folder_but_the_package_is_a_regular_package():
    """A folder without __init__.py is at most a namespace portion, and any installed package of the same
    name comes before it, wherever the root stands on sys.path (kernels/ holds the Triton sources of
    bcoder.kernels through the bcoder/kernels link)."""
    assert top_level_folders() and "kernels" in top_level_folders()
    assert [name for name in top_level_folders() if (REPO / name / "__init__.py").exists()] == ["bcoder"]


def test_no_top_level_folder_shadows_an_installed_distribution():
    """From the root (cwd first on sys.path), each top-level name that an installed distribution other than
    bcoder provides resolves to that distribution, not to the repository's folder."""
    provided = {name: dists for name, dists in importlib.metadata.packages_distributions().items()
                if set(dists) != {"bcoder"}}
    names = [name for name in top_level_folders() if name in provided]
    assert "kernels" in names, "the kernels distribution (a dependency of transformers) is not installed"
    probe = ("import importlib.util, json, sys; print(json.dumps({n: [str(p) for p in "
             "(importlib.util.find_spec(n).submodule_search_locations or [importlib.util.find_spec(n).origin])] "
             "for n in sys.argv[1:]}))")
    found = json.loads(subprocess.run([sys.executable, "-c", probe, *names], cwd=REPO, capture_output=True,
                                      text=True, check=True).stdout)
    shadowed = {name: paths for name, paths in found.items()
                if any(Path(p).resolve().is_relative_to(REPO / name) for p in paths)}
    assert shadowed == {}


@pytest.mark.parametrize("command", [["-c", "import transformers.integrations.hub_kernels, kernels; "
                                             "assert kernels.CUDAProperties"],
                                     ["-m", "bcoder.train", "--help"]])
def test_transformers_and_the_cli_work_from_the_checkouts_root(command):
    """transformers imports the `kernels` distribution; from the root it must not find kernels/."""
    importlib.metadata.distribution("kernels")
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def anchor(heading):
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_the_method_page_lands_on_a_heading():
    page = (REPO / "docs" / "method.md").read_text()
    anchors = {anchor(line.lstrip("#")) for line in page.splitlines() if line.startswith("#")}
    broken = []
    for path in tracked_files():
        if path.suffix in (".png", ".so", ".gz"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for target in re.findall(r"docs/method\.md#([\w\-]+)", line):
                if target not in anchors:
                    broken.append(f"{path.relative_to(REPO)}:{number}: #{target}")
    assert broken == []


def test_readme_layout_is_the_tree():
    readme = (REPO / "README.md").read_text()
    tree = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in tree.splitlines() if line.strip()}
    assert sorted(entry for entry in listed if not (REPO / entry).exists()) == []
    expected = {"bcoder/", "csrc/", "kernels/", "bench/", "experiments/", "tests/", "docs/", "setup.py", "CMakeLists.txt"}
    assert sorted(expected - listed) == []


def architecture_layers():
    """{path: layer number} of the modules docs/architecture.md names, from its "## N. ..." sections."""
    layers, layer = {}, None
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        heading = re.match(r"## (\d+)\. ", line)
        if heading:
            layer = int(heading.group(1))
        for path in re.findall(r"^\| `([\w/.]+)` \|", line):
            assert path not in layers, f"docs/architecture.md names {path} twice"
            layers[path] = layer
    return layers


def module_layers():
    """{module name: layer} of the package, from docs/architecture.md."""
    layers = architecture_layers()
    layer_of = {name: layers[str(path.relative_to(REPO))] for name, path in bcoder_modules().items()}
    layer_of["bcoder._C"] = layers["csrc/"]
    return layer_of


def upward_imports(files, layer_of):
    """The imports of `files` ({module name: its source file}) that go to a layer above their own."""
    # `from bcoder import ops` imports the package first, then bcoder.ops: the latter is the dependency
    return [f"{name}:{line} imports {target} (layer {layer_of[target]} above {layer_of[name]})"
            for name, path in files.items() for target, line, _ in imports(path)
            if target != "bcoder" and target in layer_of and layer_of[target] < layer_of[name]]


def test_the_architecture_page_is_the_code():
    """Every module docs/architecture.md names exists, every module of the package is named, and every
    import of one (at module level or inside a function) goes to its own layer or one below."""
    layers = architecture_layers()
    assert sorted(path for path in layers if not (REPO / path).exists()) == []
    modules = bcoder_modules()
    assert sorted({str(path.relative_to(REPO)) for path in modules.values()} - set(layers)) == []
    assert upward_imports(modules, module_layers()) == []


def test_the_architecture_check_catches_an_upward_import(tmp_path):
    """A component that imports the recipe inside a function is caught."""
    sneaky = tmp_path / "sampling.py"
    sneaky.write_text((REPO / "bcoder" / "sampling.py").read_text()
                      + "\n\ndef sneak():\n    from bcoder.stages import run_stages\n")
    assert upward_imports({"bcoder.sampling": REPO / "bcoder" / "sampling.py"}, module_layers()) == []
    assert [entry.split(" imports ")[1] for entry in upward_imports({"bcoder.sampling": sneaky}, module_layers())] \
        == ["bcoder.stages (layer 2 above 4)"]
