"""Shared test configuration: GPU-only tests skip cleanly on machines without CUDA; two speed-ups of the CPU
suite that change no result (each can be switched off to check that, with its environment variable):

- ``MEMBOUND_TEST_FAST_INTERPRETER=0`` turns off the first. Triton's interpreter patches ``triton.language``
  before a kernel runs and restores it after; it also re-patches it on *every* call of a ``@triton.jit`` helper
  inside the kernel (``tl.sum``, ``tl.sigmoid``, ``tl.cdiv`` are such helpers), once per program:
  ``inspect.getmembers`` over the language modules, about a millisecond each, 15-20% of an interpreted row
  kernel's time. While a kernel runs, a helper whose language modules the kernel's patch (or an earlier helper's,
  which the interpreter never restores) already covers is called without the re-patch. Every other patch
  (the kernel's own, a helper seeing a module not yet patched) runs as before.
- ``MEMBOUND_TEST_EXPORT_MEMO=0`` turns off the second. Within one test, ``torch.export`` of the same model
  object on inputs of the same shapes, dtypes and devices (and the same parameters and buffers: the same
  tensors, shapes, dtypes and storage) is done once: a test that compiles one model with two backends, or
  compiles it and then generates, exported it two to four times (half of such a test's time). The key is all a
  test could change between two captures (``_export_key``: also the submodules' attributes and functions, the
  config, membound's frontend functions, the MEMBOUND_* variables). The memo holds the model until the test ends
  and is emptied then; a failed export is never kept.
"""

import inspect
import os
import sys

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------------------------
# Triton interpreter: no re-patch of triton.language per helper call inside a kernel
# ---------------------------------------------------------------------------------------------
_MARK = "_membound_interpreter_patched"


def _install_fast_interpreter() -> None:
    if not torch.cuda.is_available():
        # as tests/backends/_triton_interp.py does: Triton reads it when first imported, which is below
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        from triton.runtime import interpreter as ti

        patch_lang, grid_call, tl = ti._patch_lang, ti.GridExecutor.__call__, ti.tl
        ti._LangPatchScope().restore  # noqa: B018 (the scope class this relies on)
    except (ImportError, AttributeError):  # another Triton: leave its interpreter as it is
        return
    running = {"kernel": None, "patched": False}
    langs_of: dict = {}

    def langs(fn):
        key = id(fn.__globals__)
        if key not in langs_of:
            langs_of[key] = [v for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)]
        return langs_of[key]

    def fast_patch_lang(fn):
        kernel = running["kernel"]
        seen = langs(fn)  # (none: the interpreter's own patch raises, as it would have)
        if kernel is not None and running["patched"] and fn is not kernel and seen and all(
                getattr(lang, _MARK, False) for lang in seen):
            return ti._LangPatchScope()  # already patched for this kernel: nothing to do, nothing to restore
        scope = patch_lang(fn)
        for lang in seen:  # marked through the scope: unmarked when (if ever) the patch is restored
            scope.set_attr(lang, _MARK, True)
        if fn is kernel:
            running["patched"] = True
        return scope

    def fast_grid_call(self, *args, **kwargs):
        outer = dict(running)
        running.update(kernel=self.fn, patched=False)
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            running.update(outer)

    ti._patch_lang = fast_patch_lang
    ti.GridExecutor.__call__ = fast_grid_call


if os.environ.get("MEMBOUND_TEST_FAST_INTERPRETER", "1") != "0":
    _install_fast_interpreter()


# ---------------------------------------------------------------------------------------------
# torch.export: once per model and input signature within a test
# ---------------------------------------------------------------------------------------------
_EXPORTS: dict = {}


def _tensor_key(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.device, t.stride(), t.data_ptr() if t.device.type != "meta" else 0)


def _functions(namespace: dict) -> tuple:
    """(name, id) of every callable in a namespace: a function patched in it changes the key."""
    return tuple((k, id(v)) for k, v in namespace.items() if callable(v))


def _export_key(module, leaves, name, dynamic):
    """What an export of ``module(*leaves)`` can depend on, as far as a test can change it: the model object, its
    parameters and buffers (the tensors themselves), each submodule's plain attributes, its class and the functions
    of that class and of its module, the config, the functions of membound's frontends (a test may patch one
    between two captures, tests/frontends/test_hf4_moe.py does), the MEMBOUND_* variables, and the inputs' shapes,
    dtypes, devices and strides."""
    fn = getattr(module, "_fn", None)
    if not isinstance(fn, torch.nn.Module):
        return None  # a function, a Dynamo graph: exported every time
    state = tuple((n, id(t), _tensor_key(t)) for n, t in (*fn.named_parameters(remove_duplicate=False),
                                                          *fn.named_buffers(remove_duplicate=False)))
    modules = []
    namespaces = {}
    for m in fn.modules():
        attrs = tuple((k, id(v) if callable(v) else repr(v)) for k, v in vars(m).items()
                      if k not in ("_parameters", "_buffers", "_modules") and not isinstance(v, torch.Tensor))
        modules.append((type(m), m.training, attrs, _functions(vars(type(m)))))
        namespaces[type(m).__module__] = None
    namespaces.update((n, None) for n in sys.modules if n.startswith("membound.frontends"))
    code = tuple((n, _functions(vars(sys.modules[n]))) for n in namespaces if n in sys.modules)
    config = getattr(fn, "config", None)
    config = repr(sorted(vars(config).items(), key=lambda kv: kv[0])) if config is not None else None
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("MEMBOUND_")))
    sig = tuple(_tensor_key(x)[:4] if isinstance(x, torch.Tensor) else ("const", repr(x)) for x in leaves)
    return (id(fn), repr(getattr(module, "_spec", None)), sig, name, tuple(dynamic), state, tuple(modules), code,
            config, env)


def _install_export_memo() -> None:
    import membound.frontends.export as export

    original = export.export_leaves

    def memo_export_leaves(module, leaves, name, dynamic):
        key = _export_key(module, leaves, name, dynamic)
        if key is not None and key in _EXPORTS:
            return _EXPORTS[key][1]
        ep = original(module, leaves, name, dynamic)
        if key is not None:
            _EXPORTS[key] = (module._fn, ep)  # the model held: its id cannot be reused while the entry lives
        return ep

    export.export_leaves = memo_export_leaves


if os.environ.get("MEMBOUND_TEST_EXPORT_MEMO", "1") != "0":
    _install_export_memo()


@pytest.fixture(autouse=True)
def _export_memo_per_test():
    yield
    _EXPORTS.clear()
