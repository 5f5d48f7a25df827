"""What a caller hands to the sandbox (tests, limits) and what it gets back (results)."""
from dataclasses import dataclass, field

from bcoder.sandbox.answers import POLICIES

REWARDS = {"passed": 1.0, "failed": -0.3, "runtime_error": -0.6, "compile_error": -1.0}
WALL_FACTOR = 3              # a run's wall-clock limit, in multiples of its CPU time limit


@dataclass(frozen=True)
class ValueTest:
    """`expr`, evaluated by the judge with the program's names as proxies, must equal `expected`
    (plain data; MBPP's `assert f(x) == [1, 2]`)."""
    expr: str
    expected: object


@dataclass(frozen=True)
class AssertTest:
    """Statements the judge runs with the program's names as proxies (HumanEval's `check(f)`, MBPP
    asserts whose expected side is not a literal). Passes if nothing is raised; a failing assert
    of the test's own is a wrong answer, an exception of the program's a runtime error."""
    code: str


@dataclass(frozen=True)
class CallTest:
    """APPS call-based test: `fn_name(*args)` (or `Solution().fn_name(*args)`) must return
    `expected`, as the answer policy compares (SandboxConfig.answers, answers.py)."""
    fn_name: str
    args: list
    expected: object


@dataclass(frozen=True)
class StdioTest:
    """APPS standard-input test: the program reads `input` on stdin and its stdout must
    match `output`, as the answer policy compares (SandboxConfig.answers, answers.py)."""
    input: str
    output: str


@dataclass(frozen=True)
class UnitTests:
    """The tests of one problem. `setup` is the problem's own code, run by the judge before the
    tests (MBPP `test_setup_code`; HumanEval's prompt helpers and `test` code). `names` are the
    names the tests take from the program (the entry point and any class or function an assert
    uses), each a proxy in the judge; by default every name the test code reads that is not a
    builtin, a standard module or defined by the setup (pass them for rewards: a test's `np` left to
    that default is the program's to define, and so is what `np.isclose` says). `apps` turns on the APPS harness
    conventions: its preamble imports and a top-level `return` (how answers are compared is
    SandboxConfig.answers). Stdio tests may not mix with
    the others."""
    cases: tuple = ()
    setup: str = ""
    apps: bool = False
    names: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "cases", tuple(self.cases))
        object.__setattr__(self, "names", tuple(self.names))
        if bad := [name for name in self.names if not (isinstance(name, str) and name.isidentifier())]:
            raise ValueError(f"UnitTests.names: the names the tests take from the program must be identifiers, "
                             f"got {bad!r}")
        kinds = {type(case) for case in self.cases}
        if not kinds <= {ValueTest, AssertTest, CallTest, StdioTest}:
            raise TypeError(f"unknown test type(s): {kinds - {ValueTest, AssertTest, CallTest, StdioTest}}")
        if StdioTest in kinds and len(kinds) > 1:
            raise ValueError("StdioTest cannot be mixed with other test types in one UnitTests")

    def __add__(self, other):
        return UnitTests(self.cases + other.cases, self.setup or other.setup, self.apps or other.apps,
                         tuple(dict.fromkeys(self.names + other.names)))


@dataclass(frozen=True)
class SandboxConfig:
    """Limits per program, and how answers are compared.

    `timeout` is CPU seconds: the program's processes get that many in all its runs together
    (each process's RLIMIT_CPU, rounded up to a whole second, stops a runaway one; a run whose
    processes used more, counted once they are gone, is a timeout), and the judge that many of its own for the
    tests' code; the run's wall-clock limit is WALL_FACTOR times it, so that a run's outcome
    does not depend on the machine's load while the slot gets a third of a core. `answers` is
    the answer policy (answers.py): "strict" for rewards and ranking, "apps" for the official
    APPS checker's fallbacks (numbers comparable with published ones)."""
    timeout: float = 10.0
    memory_limit: int = 2 << 30          # bytes of address space
    output_limit: int = 1 << 20          # bytes kept of stdout and of stderr
    max_processes: int = 64              # processes and threads of the program's user
    max_file_size: int = 16 << 20
    max_open_files: int = 256
    isolate: bool | None = None          # None: isolate (root: uids and namespaces; else user namespaces)
    uid_base: int = 1_500_000_000        # slot i runs programs as uid uid_base + i (root only)
    answers: str = "strict"              # the answer policy: strict | apps

    def __post_init__(self):
        if not (isinstance(self.timeout, (int, float)) and 0 < self.timeout < float("inf")):
            raise ValueError(f"SandboxConfig.timeout must be > 0 seconds, got {self.timeout!r}")
        for name in ("memory_limit", "output_limit", "max_processes", "max_file_size", "max_open_files"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SandboxConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.answers not in POLICIES:
            raise ValueError(f"SandboxConfig.answers must be one of {', '.join(POLICIES)}, got {self.answers!r}")


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
