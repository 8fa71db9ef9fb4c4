"""With ``dump_ir=dir`` the Triton backend's generated module is written beside the ``.mir`` files."""

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import membound  # noqa: E402
from membound.driver import GENERATED_MODULE  # noqa: E402
from tests.backends._triton_interp import DEVICE  # noqa: F401  (sets TRITON_INTERPRET before triton loads)

pytest.importorskip("triton")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.GELU(), nn.Linear(20, 7))


def test_triton_module_is_written_into_the_dump_folder(tmp_path: Path) -> None:
    compiled = membound.compile(_net(), example_inputs=(torch.randn(3, 12),), backend="triton", dump_ir=tmp_path)
    written = tmp_path / GENERATED_MODULE
    assert sorted(p.name for p in tmp_path.glob("*.mir"))[0] == "000-input.mir"
    assert written.read_text() == compiled.source and "@triton.jit" in written.read_text()
    compile(written.read_text(), str(written), "exec")  # a Python module as written


def test_reference_backend_writes_none_and_clears_a_stale_one(tmp_path: Path) -> None:
    (tmp_path / GENERATED_MODULE).write_text("# from an earlier run\n")
    membound.compile(_net(), example_inputs=(torch.randn(3, 12),), backend="reference", dump_ir=tmp_path)
    assert (tmp_path / "000-input.mir").exists() and not (tmp_path / GENERATED_MODULE).exists()
