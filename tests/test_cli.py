"""The membound command on a locally built Hugging Face checkpoint folder (nothing is downloaded)."""

import subprocess
import sys
from pathlib import Path

import pytest

from membound.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("tokenizers")
    from tests.e2e.hf_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def test_generate_streams_text_and_reports_tokens_per_second(checkpoint, capsys):
    assert main(["generate", str(checkpoint), "--prompt", "hello world", "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert out.strip()                               # decoded text was streamed
    assert "tokens/s" in err and "% of" in err


def test_explain_a_checkpoint_folder(checkpoint, capsys, tmp_path):
    assert main(["explain", str(checkpoint), "--batch", "2", "--seq-len", "32", "--cache-len", "64",
                 "--hardware", "h100-sxm", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "B=2, S=32" in out and "B=2, T=64" in out and "H100" in out


def test_generate_and_explain_quantized(checkpoint, capsys, tmp_path):
    assert main(["generate", str(checkpoint), "--prompt", "hello world", "--max-new-tokens", "4",
                 "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["explain", "llama-tiny", "--quantize", "int4", "--hardware", "h100-sxm", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "quant_linear" in out and "quantization accuracy" in out


@pytest.mark.parametrize("command, names", [(["explain", "no-such-model"], "llama-tiny"),
                                            (["generate", "no/such/dir", "--prompt", "x"], "config.json")])
def test_a_bad_model_is_one_line_naming_what_exists(command, names, capsys):
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and names in err, err


def test_version_and_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "membound", "--version"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.startswith("membound "), res.stderr
