"""bellman_loss_from_hidden with backend="triton": the chunks reduced by the Triton kernels.

Without CUDA the kernels run on CPU tensors under Triton's interpreter, which must be switched on
before the kernels are defined, hence the environment variable set before any bcoder import.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from test_fused_head import assert_parity, make_hidden_batch  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operator", ["conservative", "optimality"])
def test_triton_matches_bellman_loss(dtype, operator, generator):
    inputs = make_hidden_batch(3, 5, dtype, generator, "own_weight")
    inputs["is_ground_truth"][:2] = torch.tensor([True, False])
    if torch.cuda.is_available():
        inputs = {k: v if v is None else v.detach().cuda().requires_grad_(v.requires_grad) for k, v in inputs.items()}
    # Triton's interpreter casts to bf16 by truncation, not round-to-nearest as GPUs do: each bf16
    # gradient entry can be off by a whole ulp, and d W sums such errors over the rows.
    slack = 4.0 if dtype == torch.bfloat16 and not torch.cuda.is_available() else 1.0
    assert_parity(inputs, backend="triton", operator=operator, chunk_rows=4, slack=slack)
