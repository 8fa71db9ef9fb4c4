"""Typed pass options (``membound.passes.options``): each pass that takes options declares a dataclass,
and keyword arguments, option objects and pipeline text (``membound opt -p``) are checked against it
with errors that name the pass and the option."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from membound.cli import main
from membound.passes import PassContext, get_pass
from membound.passes.constant_fold import ConstantFold, ConstantFoldOptions
from membound.passes.options import PassOptionError, describe_options, parse_pipeline
from membound.passes.quantize_weights import QuantConfig, QuantizeWeights


def test_keyword_options_are_typed() -> None:
    fold = get_pass("constant-fold", max_elements=16)
    assert isinstance(fold, ConstantFold) and fold.options == ConstantFoldOptions(max_elements=16)
    assert fold.max_elements == 16 and fold.max_eval_elements == 1 << 20


def test_an_unknown_option_names_the_pass_and_lists_its_options() -> None:
    with pytest.raises(PassOptionError, match=r"pass 'constant-fold' has no option 'max_elems'; its options: "
                                              r"max_elements: int = 4096, max_eval_elements: int = 1048576"):
        get_pass("constant-fold", max_elems=16)


def test_a_wrong_type_names_the_option_and_the_type() -> None:
    with pytest.raises(PassOptionError, match=r"pass 'constant-fold': option max_elements=16.5 must be int, not float"):
        ConstantFold(max_elements=16.5)
    with pytest.raises(PassOptionError, match=r"option max_elements=True must be int"):
        ConstantFold(max_elements=True)


def test_the_options_dataclass_checks_ranges_under_the_pass_name() -> None:
    with pytest.raises(PassOptionError, match=r"pass 'constant-fold': option max_elements=-1 must be >= 0"):
        ConstantFold(max_elements=-1)


def test_options_object_or_keywords_not_both() -> None:
    assert ConstantFold(ConstantFoldOptions(max_elements=3)).max_elements == 3
    with pytest.raises(PassOptionError, match="not both"):
        ConstantFold(ConstantFoldOptions(), max_elements=3)
    with pytest.raises(PassOptionError, match="must be a ConstantFoldOptions"):
        ConstantFold({"max_elements": 3})  # type: ignore[arg-type]


def test_quantize_weights_options_are_its_quant_config() -> None:
    q = get_pass("quantize-weights", scheme="int4", group_size=64)
    assert isinstance(q, QuantizeWeights) and (q.config.scheme, q.config.group_size) == ("int4", 64)
    assert QuantizeWeights("fp8").config.scheme == "fp8"
    assert "cache" not in describe_options(QuantConfig)  # internal state is not an option
    with pytest.raises(PassOptionError, match=r"pass 'quantize-weights' has no option 'bits'"):
        get_pass("quantize-weights", bits=4)
    with pytest.raises(PassOptionError, match=r"pass 'quantize-weights': .*int5"):
        get_pass("quantize-weights", scheme="int5")


def test_a_function_pass_takes_no_options() -> None:
    with pytest.raises(TypeError, match="'dead-code-elimination' is a function and takes no options"):
        get_pass("dead-code-elimination", x=1)


def test_pipeline_text_with_options() -> None:
    entries = parse_pipeline("canonicalize, constant-fold{max-elements=16 max-eval-elements=0x100},"
                             "quantize-weights{scheme=int4 group-size=32 skip=*lm_head*|*gate*}")
    assert entries[0] == "canonicalize"
    assert entries[1].options == ConstantFoldOptions(16, 256)
    assert entries[2].config.skip == ("*lm_head*", "*gate*") and entries[2].config.group_size == 32
    with pytest.raises(PassOptionError, match=r"option max_elements='many' is not int"):
        parse_pipeline("constant-fold{max-elements=many}")
    with pytest.raises(PassOptionError, match="has no value"):
        parse_pipeline("constant-fold{max-elements}")
    with pytest.raises(PassOptionError, match="cannot read"):
        parse_pipeline("constant-fold{max-elements=1")


def test_no_free_form_options_on_the_context() -> None:
    assert not hasattr(PassContext(), "options")


def test_membound_opt_takes_pass_options(tmp_path, capsys) -> None:
    src = tmp_path / "in.mir"
    src.write_text("""graph @t(%x: f32[4]) {
    %a = arange() {start=0, end=8, step=1, dtype=f32} : f32[8]
    %b = mul(%a, %a) : f32[8]
    %s = sum(%b) {dims=[], keepdim=false, dtype=none} : f32[]
    %y = add(%x, %s) : f32[4]
    return %y
}
""")
    def opt(passes: str) -> SimpleNamespace:
        """The command in this process (``python -m membound`` is the same ``main``: tests/test_cli.py)."""
        code = main(["opt", str(src), "-p", passes, "--hardware", "none"])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    folded = opt("constant-fold")
    assert folded.returncode == 0, folded.stderr
    assert "arange" not in folded.stdout
    kept = opt("constant-fold{max-eval-elements=4}")
    assert kept.returncode == 0, kept.stderr
    assert "arange" in kept.stdout
    bad = opt("constant-fold{max-evals=4}")
    assert bad.returncode != 0 and "pass 'constant-fold' has no option 'max-evals'" in bad.stderr
