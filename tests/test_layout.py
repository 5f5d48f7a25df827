"""The repository's shape: imports only go down, the few function-local imports are the documented ones,
no file points outside the repository, every docs/method.md link lands on a heading, and the README's
layout section is the tree."""
import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Function-local imports, each for a reason stated where it stands.
LOCAL_IMPORTS = {
    ("bcoder/__init__.py", "importlib"),              # the loss API loads on first use: `import bcoder` stays light
    ("bcoder/sandbox/__init__.py", "importlib"),      # the sandbox worker imports this package: it stays small
    ("bcoder/sandbox/__init__.py", "bcoder.sandbox.pool"),
    ("bcoder/sandbox/program.py", "_sitebuiltins"),   # every module the worker holds slows each fork
    ("bcoder/sandbox/program.py", "ast"),
    ("bcoder/ops.py", "bcoder.kernels"),              # Triton is an optional dependency
    ("bcoder/causal.py", "peft"),                     # 2 s to import; only LoRA Q-models need it
}
OUTSIDE = re.compile(r"\bSPEC\b|SPEC\.md|DESIGN\.md|\.\./shared|/work/")


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


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if path.suffix in (".png", ".so", ".whl", ".gz") or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert offenders == []


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
    listed, parent = set(), ""
    for line in tree.splitlines():
        entry = line.split()[0] if line.strip() else ""
        if not entry:
            continue
        if line.startswith(" "):
            listed.add(parent + entry)
        else:
            listed.add(entry)
            parent = entry if entry.endswith("/") else ""
    assert listed, "the README has no layout entries"
    missing = sorted(entry for entry in listed if not (REPO / entry).exists())
    assert missing == []
    expected = {f"{path.relative_to(REPO)}" for path in (REPO / "bcoder").glob("*.py") if path.name != "__init__.py"}
    expected |= {f"{path.relative_to(REPO)}/" for path in (REPO / "bcoder").iterdir()
                 if path.is_dir() and path.name != "__pycache__"}
    expected |= {"csrc/", "kernels/", "bench/", "tests/", "docs/", "setup.py", "CMakeLists.txt"}
    assert sorted(expected - listed) == []
