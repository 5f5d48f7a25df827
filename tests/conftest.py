import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run on CPU tensors under Triton's interpreter, which is read
    # when the kernels are defined (the first import of bcoder.kernels.bellman): on before any test.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tuple of bellman_loss's tensor arguments is bench/common.py's LossInputs, one definition for the
# benchmarks and the tests. bench/ is not a package (no top-level folder but bcoder/ is): it goes on
# sys.path as bench's own scripts and tests put it there, appended so that it shadows nothing of tests/.
BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

from common import LossInputs  # noqa: E402  (bench/common.py)

from bcoder.sandbox import UnitTests  # noqa: E402


def run_in_order(box, programs, tests):
    """Each program in a call of its own to `box` (a Sandbox), so in this order: a call runs its programs
    in a random one. `tests`: one UnitTests for all, or one per program."""
    suites = [tests] * len(programs) if isinstance(tests, UnitTests) else tests
    return [box.run([program], suite)[0] for program, suite in zip(programs, suites, strict=True)]


def loss_kwargs(inputs):
    """bellman_loss's keyword arguments from its tensor arguments in order (a LossInputs, list or tuple)."""
    return dict(zip(LossInputs._fields, inputs, strict=True))


def make_batch(batch, steps, vocab, dtype=torch.float32, lengths=None, ground_truth=None, scale=3.0,
               offset=0.0, generator=None, requires_grad=True):
    """Random inputs of bellman_loss (a LossInputs: logits, ckpt_logits, values, actions, mask, rewards,
    is_ground_truth), on CPU."""
    g = generator
    logits = (torch.randn(batch, steps, vocab, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
    ckpt = (torch.randn(batch, steps, vocab, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
    values = torch.randn(batch, steps, generator=g, dtype=torch.float64).to(dtype)
    actions = torch.randint(0, vocab, (batch, steps), generator=g)
    if lengths is None:
        lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = torch.arange(steps) < torch.as_tensor(lengths).unsqueeze(1)
    rewards = torch.tensor([-1.0, -0.6, -0.3, 1.0], dtype=torch.float64)[torch.randint(0, 4, (batch,), generator=g)].to(dtype)
    if ground_truth is None:
        ground_truth = torch.rand(batch, generator=g) < 0.5
    is_ground_truth = torch.as_tensor(ground_truth, dtype=torch.bool).expand(batch).clone()
    logits.requires_grad_(requires_grad)
    values.requires_grad_(requires_grad)
    return LossInputs(logits, ckpt, values, actions, mask, rewards, is_ground_truth)


@pytest.fixture
def generator():
    """Fresh random inputs in every run; the seed is printed (shown on failure) to replay a case."""
    seed = secrets.randbits(31)
    print(f"generator seed: {seed}")
    return torch.Generator().manual_seed(seed)


def assert_same_values(actual, expected):
    """Exact equality (NaN == NaN, inf == inf), after promoting both to float64."""
    torch.testing.assert_close(actual.double(), expected.double(), rtol=0, atol=0, equal_nan=True)


def assert_error_within_reference(actual, same_dtype_reference, oracle, dtype):
    """|actual - oracle| <= |same-dtype reference - oracle| + one ulp of `dtype` + 1e-6 (elementwise);
    non-finite oracle entries must be matched exactly."""
    actual, same_dtype_reference, oracle = actual.double(), same_dtype_reference.double(), oracle.double()
    finite = torch.isfinite(oracle)
    assert_same_values(actual[~finite], oracle[~finite])
    eps, floor = (1e-13, 1e-13) if dtype == torch.float64 else (torch.finfo(dtype).eps, 1e-6)
    allowed = (same_dtype_reference - oracle).abs() + eps * oracle.abs() + floor
    excess = ((actual - oracle).abs() - allowed)[finite]
    assert excess.numel() == 0 or excess.max() <= 0, f"error exceeds the reference's by {excess.max().item()}"


def assert_cuda_graph_replays(step, refill):
    """Captures step() in a CUDA graph (after a warm-up outside the capture: allocator pools, lazy
    module loading, kernel compilation), refills its static inputs with refill(), replays, and
    checks the captured outputs equal a fresh eager step() on the new inputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    refill()
    graph.replay()
    for got, expected in zip(captured, step()):
        assert torch.equal(got, expected)


# ----- the fused op's backends (tests/test_bellman_op.py runs its contract on each) -----

BACKEND_NAMES = ("cpp", "triton", "cuda")  # the kernel backends; "reference" is the oracle


@dataclass(frozen=True)
class Backend:
    """One backend of the fused op, as the tests drive it."""

    name: str  # "cpp" | "triton" | "cuda" | "reference": the backend= argument of bcoder's losses
    device: torch.device  # where its tensors live
    ops: tuple  # bcoder.ops.BackendOps: stats, backward, backward_
    error: type  # what its kernels raise for bad arguments
    fake_error: type  # what its fake kernel (shape propagation under FakeTensorMode) raises for them
    stride_message: str  # its complaint about logits whose columns are not contiguous
    interpreted: bool = False  # Triton's kernels on CPU tensors, under its (slow, eager-only) interpreter

    def block(self, dtype):
        """Elements of a row the kernels handle per step: the C++ kernel's L1 chunk, the Triton
        kernels' BLOCK, a 512-thread CUDA block's batch of four 16-byte vectors per thread."""
        if self.name == "triton":
            from bcoder.kernels import bellman

            return bellman._launch_config(1 << 20, dtype)[0]
        if self.name == "cuda":
            return 4 * 512 * (16 // torch.empty((), dtype=dtype).element_size())
        return 2048  # cpp (kChunk in csrc/bellman_cpu.cpp); the reference has no blocks


def make_backend(name):
    """The Backend called `name`, or a skip saying why it cannot run here."""
    from bcoder import ops  # loads bcoder._C: only in tests that need it

    if name in ("cpp", "reference"):
        return Backend(name, torch.device("cpu"), ops.backend_ops(name), RuntimeError, RuntimeError,
                       "contiguous in its last dim")
    if name == "triton":
        pytest.importorskip("triton", reason="backend 'triton' needs the triton package (pip install triton)")
        interpreted = not torch.cuda.is_available()
        if interpreted and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("backend 'triton' without a GPU needs TRITON_INTERPRET=1 (this run set it to "
                        f"{os.environ.get('TRITON_INTERPRET')!r})")
        return Backend(name, torch.device("cpu" if interpreted else "cuda"), ops.backend_ops(name), ValueError,
                       ValueError, "contiguous last dim", interpreted)
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("backend 'cuda' needs a CUDA device (torch.cuda.is_available() is False)")
        if not ops.has_cuda_kernels():
            pytest.skip("backend 'cuda': bcoder._C was built without its CUDA kernels (needs a CUDA torch and "
                        "a CUDA toolkit at build time)")
        return Backend(name, torch.device("cuda"), ops.backend_ops(name), RuntimeError, RuntimeError,
                       "unit column stride")
    raise ValueError(f"no backend {name!r}")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    """Each kernel backend of the fused op in turn (skipped, with the reason, where it cannot run);
    parametrize "backend" indirectly to pick others, "reference" included."""
    return make_backend(request.param)
