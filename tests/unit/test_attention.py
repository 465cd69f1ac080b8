"""The editor's packed attention (operators/asr/granite_nar/attention.py), on CPU: kernel
availability, backend choice, the FlexAttention block mask built without an L x L tensor, and the
batch-invariance keywords of torch's varlen_attn (checked with fakes of its 2.13 and 2.11 APIs)."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from operators.asr.granite_nar import attention


@pytest.fixture(autouse=True)
def _fresh_probes():
    attention.clear_caches()
    yield
    attention.clear_caches()


# --------------------------------------------------------------------------------------------------
# 1. flash-attn is available only when its CUDA extension imports
# --------------------------------------------------------------------------------------------------
def _fake_flash(tmp_path, monkeypatch, ext_source: str | None):
    """A `flash_attn` package on sys.path; `flash_attn_2_cuda` missing (None) or with ext_source."""
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""\
        import flash_attn_2_cuda  # what flash-attn 2.8 does on first use

        def flash_attn_varlen_func(*args, **kwargs):
            raise AssertionError("not called in these tests")
        """))
    if ext_source is not None:
        (tmp_path / "flash_attn_2_cuda.py").write_text(ext_source)
    for name in ("flash_attn", "flash_attn_2_cuda"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_flash_with_missing_cuda_extension_is_unavailable(tmp_path, monkeypatch):
    _fake_flash(tmp_path, monkeypatch, ext_source=None)
    assert importlib.util.find_spec("flash_attn") is not None   # what the old check looked at
    assert not attention.flash_available()
    assert attention.resolve_backend("auto", "cuda", torch.bfloat16) != "flash"
    with pytest.raises(ValueError, match="flash_attn_2_cuda"):
        attention.resolve_backend("flash", "cuda", torch.bfloat16)
    reason = attention.kernel_report()["flash"]
    assert "flash_attn_2_cuda" in reason and "ModuleNotFoundError" in reason


def test_flash_with_broken_shared_object_is_unavailable(tmp_path, monkeypatch):
    # a .so that fails to load raises OSError (or ImportError: undefined symbol), not only ImportError
    _fake_flash(tmp_path, monkeypatch, ext_source="raise OSError('libcudart.so.12: cannot open shared object file')")
    assert not attention.flash_available()
    assert "libcudart" in attention.kernel_report()["flash"]


def test_flash_with_importable_extension_is_chosen(tmp_path, monkeypatch):
    _fake_flash(tmp_path, monkeypatch, ext_source="")
    assert attention.flash_available()
    assert attention.resolve_backend("auto", "cuda", torch.float16) == "flash"
    assert attention.resolve_backend("auto", "cuda", torch.float32) == "sdpa_per_sample"


def test_flash_probe_is_cached(tmp_path, monkeypatch):
    _fake_flash(tmp_path, monkeypatch, ext_source="")
    assert attention.flash_available()
    (tmp_path / "flash_attn_2_cuda.py").unlink()
    monkeypatch.delitem(sys.modules, "flash_attn_2_cuda")
    assert attention.flash_available()          # probed once per process
    attention.clear_caches()
    assert not attention.flash_available()


def test_kernel_report_and_cli_here():
    report = attention.kernel_report()
    assert set(report) == {"flash", "varlen", "flex", "sdpa_per_sample"}
    assert report["sdpa_per_sample"] == "ok"
    if not torch.cuda.is_available():
        assert report["flash"] != "ok" and report["varlen"] != "ok"
        assert attention.main(["--no-cuda", "varlen"]) == (0 if torch.version.cuda else 1)
    assert attention.main(["sdpa_per_sample"]) == 0
    assert attention.main(["no-such-kernel"]) == 1


# --------------------------------------------------------------------------------------------------
# 2. backend choice for every device / dtype / kernel combination
# --------------------------------------------------------------------------------------------------
HALF = (torch.float16, torch.bfloat16)
COMBOS = list(itertools.product(("cpu", "cuda"), (torch.float32, torch.bfloat16, torch.float16),
                                (True, False), (True, False)))


def _pretend(monkeypatch, device, flash, varlen):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda")
    monkeypatch.setattr(attention, "flash_available", lambda: device == "cuda" and flash)
    monkeypatch.setattr(attention, "varlen_available", lambda: device == "cuda" and varlen)


@pytest.mark.parametrize("device,dtype,flash,varlen", COMBOS,
                         ids=[f"{d}-{str(t)[6:]}-flash{int(f)}-varlen{int(v)}" for d, t, f, v in COMBOS])
def test_resolve_backend_every_combination(monkeypatch, device, dtype, flash, varlen):
    _pretend(monkeypatch, device, flash, varlen)
    fast = device == "cuda" and dtype in HALF
    want = ("flash" if flash else "varlen" if varlen else "sdpa_per_sample") if fast else "sdpa_per_sample"
    assert attention.resolve_backend("auto", device, dtype) == want
    for name, present in (("flash", flash), ("varlen", varlen)):
        if fast and present:
            assert attention.resolve_backend(name, device, dtype) == name
        else:
            with pytest.raises(ValueError) as err:
                attention.resolve_backend(name, device, dtype)
            msg = str(err.value)
            assert name in msg and ("sdpa_per_sample" in msg or "auto" in msg)   # the way out
            if device != "cuda":
                assert "CUDA" in msg
            elif dtype not in HALF:
                assert "float16/bfloat16" in msg
            else:
                assert ("flash-attn" if name == "flash" else "varlen_attn") in msg and "float16/bfloat16" not in msg
    assert attention.resolve_backend("sdpa_per_sample", device, dtype) == "sdpa_per_sample"
    if attention.flex_available():
        assert attention.resolve_backend("flex", device, dtype) == "flex"
    with pytest.raises(ValueError, match="choose one of"):
        attention.resolve_backend("nope", device, dtype)


# --------------------------------------------------------------------------------------------------
# 5. the FlexAttention BlockMask, built from the boundaries
# --------------------------------------------------------------------------------------------------
try:
    from torch.nn.attention import flex_attention as flex
except ImportError:  # only the flex tests need it
    flex = None
needs_flex = pytest.mark.skipif(flex is None or not attention.flex_available(), reason="no FlexAttention in this torch")


def _rows(num, idx):
    num, idx = num[0, 0], idx[0, 0]
    return [sorted(idx[i, :num[i]].tolist()) for i in range(num.shape[0])]


def _reference_block_mask(lengths):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    n = sum(lengths)
    return flex.create_block_mask(lambda b, h, q, kv: doc[q] == doc[kv], None, None, n, n, device="cpu")


PACKINGS = [[5, 130, 1, 257, 128], [128, 128], [300], [128], [1], [0, 5, 0, 200, 0], [256, 1, 255],
            [129, 127, 128, 3], [64] * 9, [513, 2, 700]]


@needs_flex
@pytest.mark.parametrize("lengths", PACKINGS, ids=[str(p) for p in PACKINGS])
def test_block_mask_equals_create_block_mask(lengths):
    ours = attention.Packing(lengths, "flex", torch.device("cpu")).block_mask()
    ref = _reference_block_mask(lengths)
    assert ours.seq_lengths == ref.seq_lengths == (sum(lengths), sum(lengths))
    assert torch.equal(ours.to_dense(), ref.to_dense())
    # same partial / full split, on the kv side and on the q side (used by the backward)
    assert _rows(ours.kv_num_blocks, ours.kv_indices) == _rows(ref.kv_num_blocks, ref.kv_indices)
    assert _rows(ours.full_kv_num_blocks, ours.full_kv_indices) == _rows(ref.full_kv_num_blocks, ref.full_kv_indices)
    assert _rows(ours.q_num_blocks, ours.q_indices) == _rows(ref.q_num_blocks, ref.q_indices)
    assert _rows(ours.full_q_num_blocks, ours.full_q_indices) == _rows(ref.full_q_num_blocks, ref.full_q_indices)
    # and the element mask it stands for is exactly "same sample"
    n = sum(lengths)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    same = doc[:, None] == doc[None, :]
    q, kv = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert torch.equal(ours.mask_mod(0, 0, q, kv), same)
    blk = ours.to_dense()[0, 0].repeat_interleave(128, 0).repeat_interleave(128, 1)[:n, :n].bool()
    assert not (same & ~blk).any()          # no same-sample pair falls outside the mask's blocks


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the bytes of every op output (numel * element_size; views count in full)."""

    def __init__(self):
        super().__init__()
        self.largest, self.total, self.op = 0, 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                size = t.numel() * t.element_size()
                self.total += size
                if size > self.largest:
                    self.largest, self.op = size, func
        return out


MiB = 2 ** 20


def _measure(lengths):
    rec = _Allocations()
    with rec:
        attention.Packing(lengths, "flex", torch.device("cpu")).block_mask()
    return rec


@needs_flex
def test_block_mask_memory_is_bounded_without_an_L_by_L_tensor():
    # at L = 4096 an L x L bool mask (what create_block_mask evaluates) is 16 MiB: checked first, so
    # an implementation that builds one fails here quickly instead of allocating gigabytes at 64k.
    small = _measure([128] * 32)
    assert small.largest < 256 * 1024, (small.largest, small.op)
    # L = 65536 (64k): an L x L bool would be 4 GiB. Ours is O((L/128)^2): nb = 512 blocks, the
    # largest tensor is an nb x nb int64 (argsort in torch's q-side transpose) = 2 MiB.
    for lengths in ([128] * 512, [512] * 128, [127, 129] * 256, [100] * 655):
        rec = _measure(lengths)
        assert rec.largest <= 4 * MiB, (sum(lengths), rec.largest, rec.op)
        assert rec.total < 128 * MiB, (sum(lengths), rec.total)


def _qkv(lengths, hq=4, hkv=2, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return (torch.randn(1, hq, n, d, generator=g, dtype=dtype), torch.randn(1, hkv, n, d, generator=g, dtype=dtype),
            torch.randn(1, hkv, n, d, generator=g, dtype=dtype))


def _run(backend, lengths, q, k, v):
    return attention.packed_attention(q, k, v, attention.Packing(lengths, backend, torch.device("cpu")), 0.25)


@needs_flex
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("lengths", [[5, 130, 1, 257, 128], [300], [128, 128, 40]])
def test_flex_matches_sdpa_per_sample_with_gqa(lengths):
    q, k, v = _qkv(lengths)
    ref = _run("sdpa_per_sample", lengths, q, k, v)
    try:
        out = _run("flex", lengths, q, k, v)
    except Exception as e:  # eager FlexAttention needs nothing but torch; skip, don't hide, if not
        pytest.skip(f"FlexAttention does not run eagerly on CPU here: {type(e).__name__}: {e}")
    assert out.shape == ref.shape == (1, sum(lengths), 4, 16)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_flex
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_compiled_flex_does_not_recompile_per_packing():
    """One torch.compile(flex_attention, dynamic=True) serves every packing: a new mask_mod closure
    (same code, new captured doc-id tensor) and a new length do not recompile. Dynamo's guards are
    the same whatever the backend; the "eager" backend keeps this cheap on CPU."""
    testing = pytest.importorskip("torch._dynamo.testing")
    torch._dynamo.reset()
    counter = testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(flex.flex_attention, dynamic=True, backend=counter)
    for lengths in ([100, 200], [50, 60, 70, 300], [400, 9], [1, 2, 3, 500]):
        q, k, v = _qkv(lengths)
        bm = attention.Packing(lengths, "flex", torch.device("cpu")).block_mask()
        out = compiled(q, k, v, block_mask=bm, scale=0.25, enable_gqa=True)
        torch.testing.assert_close(out.transpose(1, 2), _run("sdpa_per_sample", lengths, q, k, v),
                                   rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------------
# 6. varlen: num_splits=1 and native GQA where torch's varlen_attn has them (2.13), else expand K/V
# --------------------------------------------------------------------------------------------------
def _per_sample(query, key, value, cu, scale, enable_gqa):
    """(T, H, D) varlen semantics through SDPA per sample."""
    offs = cu.tolist()
    outs = [F.scaled_dot_product_attention(query[a:b].transpose(0, 1), key[a:b].transpose(0, 1),
                                           value[a:b].transpose(0, 1), scale=scale, enable_gqa=enable_gqa)
            for a, b in zip(offs[:-1], offs[1:]) if b > a]
    return torch.cat(outs, dim=1).transpose(0, 1)


def _fake_varlen_213(calls):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
        calls.append({"q_heads": query.shape[1], "kv_heads": key.shape[1], "enable_gqa": enable_gqa,
                      "num_splits": num_splits, "max_q": max_q})
        if not enable_gqa and query.shape[1] != key.shape[1]:
            raise ValueError("Try setting enable_gqa=True for GQA.")
        return _per_sample(query, key, value, cu_seq_q, scale, enable_gqa)
    return varlen_attn


def _fake_varlen_211(calls):
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), k_cache=None, v_cache=None, cache_seqlens=None,
                    cache_batch_idx=None, page_table=None, seqused_k=None):
        calls.append({"q_heads": query.shape[1], "kv_heads": key.shape[1]})
        assert query.shape[1] == key.shape[1], "torch 2.11's varlen_attn has no GQA"
        return _per_sample(query, key, value, cu_seq_q, scale, False)
    return varlen_attn


LENGTHS = [5, 130, 1, 257, 128]


def test_varlen_kwargs_detection():
    calls = []
    assert attention._varlen_kwargs(_fake_varlen_213(calls)) == {"num_splits", "enable_gqa"}
    assert attention._varlen_kwargs(_fake_varlen_211(calls)) == frozenset()
    assert attention._varlen_kwargs(len) == frozenset()          # builtins without a signature


def test_varlen_passes_num_splits_1_and_native_gqa(monkeypatch):
    pytest.importorskip("torch.nn.attention.varlen")
    calls = []
    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", _fake_varlen_213(calls))
    q, k, v = _qkv(LENGTHS)
    out = _run("varlen", LENGTHS, q, k, v)
    assert calls == [{"q_heads": 4, "kv_heads": 2, "enable_gqa": True, "num_splits": 1, "max_q": 257}]
    torch.testing.assert_close(out, _run("sdpa_per_sample", LENGTHS, q, k, v), rtol=1e-6, atol=1e-6)


def test_varlen_without_the_keywords_expands_kv(monkeypatch):
    pytest.importorskip("torch.nn.attention.varlen")
    calls = []
    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", _fake_varlen_211(calls))
    q, k, v = _qkv(LENGTHS)
    out = _run("varlen", LENGTHS, q, k, v)
    assert calls == [{"q_heads": 4, "kv_heads": 4}]
    torch.testing.assert_close(out, _run("sdpa_per_sample", LENGTHS, q, k, v), rtol=1e-6, atol=1e-6)


def test_varlen_all_length_one_avoids_the_split_kv_decoding_shape(monkeypatch):
    """max_seqlen_q == 1 with fewer kv heads is the shape where FA2 splits KV by a batch-dependent
    heuristic: K/V are expanded there instead."""
    pytest.importorskip("torch.nn.attention.varlen")
    calls = []
    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", _fake_varlen_213(calls))
    lengths = [1, 1, 1]
    q, k, v = _qkv(lengths)
    out = _run("varlen", lengths, q, k, v)
    assert calls[0]["kv_heads"] == 4 and calls[0]["enable_gqa"] is False and calls[0]["num_splits"] == 1
    torch.testing.assert_close(out, _run("sdpa_per_sample", lengths, q, k, v), rtol=1e-6, atol=1e-6)


def test_the_installed_varlen_attn_signature():
    """This torch's varlen_attn: torch 2.13 has both keywords; 2.11 has neither (the code detects it)."""
    tv = pytest.importorskip("torch.nn.attention.varlen")
    got = attention._varlen_kwargs(tv.varlen_attn)
    major_minor = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if major_minor >= (2, 13):
        assert got == {"num_splits", "enable_gqa"}
