"""With ``dump_ir=dir`` the Triton backend's generated module is written beside the ``.mir`` files."""

import contextlib
from pathlib import Path
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import membound  # noqa: E402
from membound.driver import GENERATED_MODULE  # noqa: E402
from tests.backends._triton_interp import DEVICE, Interpreted  # noqa: F401  (sets TRITON_INTERPRET before triton loads)

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


_interp = Interpreted(__file__)


def test_first_launch_at_new_shapes_runs_under_the_compile_watch(request: pytest.FixtureRequest) -> None:
    if not _interp.runs_here(request):
        return
    from membound import progress

    net = _net()
    compiled = membound.compile(net, example_inputs=(torch.randn(3, 12),), backend="triton")
    exe = compiled.entries[-1].executable
    assert exe.compile_watch is progress.kernel_compiles      # set by the compile driver
    watched: list[str] = []

    @contextlib.contextmanager
    def watch(name: str) -> Iterator[None]:
        watched.append(name)
        yield

    exe.compile_watch = watch
    for rows in (3, 3, 5):
        x = torch.randn(rows, 12)
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-4)
    assert len(watched) == 2                                 # once per new input shape, not per call
