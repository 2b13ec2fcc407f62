"""torch.compile of the window-sparse Swin: one graph (no breaks), exact against eager, on a micro model.

Compiling on CPU is slow, so every test compiles once. `aot_eager` checks what this engine is responsible
for (dynamo captures the whole forward in one graph, functionalised in-place buffer updates stay exact) in a
few seconds; `inductor` checks the real compiler and needs a C++ toolchain: it is skipped, with the reason,
where none works. The file takes about 25 s with a warm inductor cache (/tmp/torchinductor_$USER),
a few minutes on its first run on a machine.
"""
import functools

import pytest
import timm
import torch

import sparsevit_cli as sv
from test_sparse_swin import randomize_, rel_err

MICRO = dict(img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, num_classes=10)


def micro_swin(sparsity, window_score=None):
    torch.manual_seed(0)
    model = randomize_(timm.create_model("swin_tiny_patch4_window7_224", **MICRO)).eval()
    return sv.sparsify(model, sparsity, window_score=window_score)


@functools.lru_cache(maxsize=None)
def inductor_unavailable():
    """Why inductor cannot compile here (e.g. no working C++ compiler), or None when it can."""
    try:
        torch._dynamo.reset()
        torch.compile(lambda t: t * 2.0 + 1.0, backend="inductor")(torch.ones(3))
    except Exception as e:  # InvalidCxxCompiler, BackendCompilerFailed, ...: the toolchain, not this engine
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def compiled_vs_eager(model, backend):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)  # graph break = error
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return compiled(x), model(x)


@pytest.mark.parametrize("sparsity,score", [(0.0, None), (0.5, None), (0.5, "mean-abs")])
def test_one_graph_exact_against_eager(sparsity, score):
    got, want = compiled_vs_eager(micro_swin(sparsity, score), "aot_eager")
    assert rel_err(want, got) < 1e-5


@pytest.mark.parametrize("sparsity", [0.5])  # one inductor compile (~30-60 s on 2 cores); aot_eager covers 0 too
def test_inductor_exact_against_eager(sparsity):
    reason = inductor_unavailable()
    if reason:
        pytest.skip(f"torch.compile (inductor) unavailable here: {reason}")
    got, want = compiled_vs_eager(micro_swin(sparsity), "inductor")
    assert rel_err(want, got) < 1e-5


def test_compiles_after_eager_runs_on_a_fresh_and_a_cached_grid():
    """The grids a stage caches after an eager forward must not break dynamo (a torch.device in the cache
    key once made it fail with "NameError: name 'device' is not defined")."""
    model = sv.sparsify(timm.create_model("swin_tiny_patch4_window7_224", img_size=64, embed_dim=16, depths=[2, 2],
                                          num_heads=[1, 2], window_size=4).eval(), [[0.5], [0.4]])
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        eager = model(x)  # fills the grid caches
        compiled = torch.compile(model, backend="aot_eager")
        assert torch.allclose(compiled(x), eager, rtol=1e-5, atol=1e-6)
