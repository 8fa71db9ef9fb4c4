"""A tensor the model's code makes with ``torch.tensor(...)`` (no device) is lifted by torch.export on the CPU even
when the model is on a GPU; eager torch takes a 0-d CPU tensor beside CUDA ones, a Triton kernel does not (Gemma 3n's
RMSNorm failed so on the H100: "Pointer argument cannot be accessed from Triton (cpu tensor?)"). The capture moves
such constants to the device of the model's parameters (GPU only)."""

from __future__ import annotations

import pytest
import torch

import membound
from membound.frontends.export import capture_export


class _Literal(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(7, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w
        return torch.maximum(y.pow(2).mean(-1, keepdim=True), torch.tensor(0.25)).sqrt() * y + torch.tensor(1.5)


@pytest.mark.gpu
def test_a_literal_tensor_constant_runs_in_the_kernels_on_the_models_device() -> None:
    torch.manual_seed(0)
    model = _Literal().cuda()
    x = torch.randn(3, 9, 7, device="cuda")
    cap = capture_export(model, (x,))
    constants = [cap.graph.tensors[p.name] for p in cap.graph.params if p.name != "w"]
    assert constants and all(t.device.type == "cuda" for t in constants), [t.device for t in constants]
    compiled = membound.compile(model, backend="triton")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)  # fp32
