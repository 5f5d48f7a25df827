"""What a caller hands to the sandbox (tests, limits) and what it gets back (results)."""
from dataclasses import dataclass, field

REWARDS = {"passed": 1.0, "failed": -0.3, "runtime_error": -0.6, "compile_error": -1.0}


@dataclass(frozen=True)
class ValueTest:
    """`expr` evaluated after the program must equal `expected` (plain data, e.g. MBPP's
    `assert f(x) == [1, 2]`). The evaluator compares, outside the program's process."""
    expr: str
    expected: object


@dataclass(frozen=True)
class AssertTest:
    """Statements run after the program (HumanEval's `check(f)`, MBPP asserts whose expected
    side is not a literal). Passes if nothing is raised; a failing assert is a wrong answer.
    Comparisons inside asserts are made on plain-data copies of both sides."""
    code: str


@dataclass(frozen=True)
class CallTest:
    """APPS call-based test: `fn_name(*args)` (or `Solution().fn_name(*args)`) must return
    `expected`; compared as the APPS harness does, outside the program's process."""
    fn_name: str
    args: list
    expected: object


@dataclass(frozen=True)
class StdioTest:
    """APPS standard-input test: the program reads `input` on stdin and its stdout must
    match `output` (per stripped line, with the APPS harness's fallbacks)."""
    input: str
    output: str


@dataclass(frozen=True)
class UnitTests:
    """The tests of one problem. `setup` runs once after the program, before the tests (MBPP
    `test_setup_code`, HumanEval's `test` code). `apps` turns on the APPS harness conventions:
    its preamble imports and a top-level `return`. Stdio tests may not mix with the others."""
    cases: tuple = ()
    setup: str = ""
    apps: bool = False

    def __post_init__(self):
        object.__setattr__(self, "cases", tuple(self.cases))
        kinds = {type(case) for case in self.cases}
        if not kinds <= {ValueTest, AssertTest, CallTest, StdioTest}:
            raise TypeError(f"unknown test type(s): {kinds - {ValueTest, AssertTest, CallTest, StdioTest}}")
        if StdioTest in kinds and len(kinds) > 1:
            raise ValueError("StdioTest cannot be mixed with other test types in one UnitTests")

    def __add__(self, other):
        return UnitTests(self.cases + other.cases, self.setup or other.setup, self.apps or other.apps)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits per program; `timeout` is wall-clock seconds for the program and all its tests."""
    timeout: float = 10.0
    memory_limit: int = 2 << 30          # bytes of address space
    output_limit: int = 1 << 20          # bytes kept of stdout and of stderr
    max_processes: int = 64              # processes and threads of the program's user
    max_file_size: int = 16 << 20
    max_open_files: int = 256
    isolate: bool | None = None          # None: isolate when running as root
    uid_base: int = 1_500_000_000        # slot i runs programs as uid uid_base + i (root only)


@dataclass
class TestResult:
    __test__ = False                     # not a pytest test class
    status: str                          # passed | failed | error | timeout | not_run
    error_type: str = ""
    message: str = ""


@dataclass
class ProgramResult:
    outcome: str                         # passed | failed | runtime_error | compile_error
    tests: list = field(default_factory=list)     # one TestResult per test case
    error_type: str = ""
    message: str = ""
    seconds: float = 0.0                 # wall-clock, all runs of the program
    peak_memory: int = 0                 # bytes (max resident set size)
    stdout: str = ""
    stderr: str = ""

    @property
    def reward(self):
        return REWARDS[self.outcome]

    @property
    def passed(self):
        return self.outcome == "passed"

    @property
    def tests_passed(self):
        return sum(test.status == "passed" for test in self.tests)

    @property
    def tests_total(self):
        return len(self.tests)
