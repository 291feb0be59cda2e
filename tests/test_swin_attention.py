"""timm Swin's window attention through ``torch.ops.supernet_kernels.attention``
(:class:`SKSwinAttention`): the module and a converted Swin equal timm's (shifted windows
included), gradients (the relative-position table's too), the Triton backend, extraction and
save / load."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.dispatch import OpCounter
from helpers.dispatch import count_op_calls as run_counting
from helpers.numerics import rel_norm as rel
from torch import nn

import supernet_kernels as sk
from supernet_kernels.supernet.attention import uses_our_attention
from supernet_kernels.supernet.swin_attention import SKSwinAttention

timm = pytest.importorskip("timm")
from timm.models.swin_transformer import SwinTransformer, WindowAttention  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def make_swin(img_size=56, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=7):
    """A small Swin (default: a 14 x 14 patch grid, 7 x 7 windows = 49 tokens, stage 0 with
    4 windows and a shifted block, stage 1 one unshifted window), seed 0, eval mode. The
    relative-position tables are drawn with std 0.5 (timm's 0.02 would hide a wrong bias); no
    stochastic depth (timm's default 0.1 would make training-mode outputs random)."""
    torch.manual_seed(0)
    m = SwinTransformer(
        img_size=img_size, patch_size=4, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
        window_size=window_size, num_classes=10, drop_path_rate=0.0,
    )  # fmt: skip
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "relative_position_bias_table" in n:
                p.normal_(0, 0.5)
    return m.eval()


def _attn_names(m):
    return [
        f"layers.{s}.blocks.{j}.attn"
        for s, st in enumerate(m.layers)
        for j in range(len(st.blocks))
    ]


@pytest.fixture(scope="module")
def conv():
    model = make_swin()
    torch.manual_seed(1)
    return model, sk.convert(model)


def test_model_has_shifted_windows(conv):
    model, _ = conv
    shifted = model.layers[0].blocks[1]
    assert any(shifted.shift_size) and shifted.attn_mask is not None
    assert shifted.attn_mask.shape == (4, 49, 49)  # 4 windows: G = 4 in the op


# --------------------------------------------------------------------------- the module
def _window_inputs(model, batch=2, seed=3):
    """Stage 0's shifted block: its attention, its real (nW, N, N) mask and tokens
    (batch * nW, N, C)."""
    blk = model.layers[0].blocks[1]
    gen = torch.Generator().manual_seed(seed)
    nW, N = blk.attn_mask.shape[:2]
    x = torch.randn(batch * nW, N, blk.attn.dim, generator=gen)
    return blk.attn, blk.attn_mask, x


def test_module_equals_window_attention_with_and_without_mask(conv):
    model, _ = conv
    orig, mask, x = _window_inputs(model)
    ours = SKSwinAttention.from_module(copy.deepcopy(orig))
    for fused in (True, False):  # timm's SDPA and its explicit path
        orig.fused_attn = fused
        for m in (None, mask):
            with torch.no_grad(), OpCounter() as c:
                y = ours(x, mask=m)
            assert c.calls == 1
            with torch.no_grad():
                assert rel(y, orig(x, mask=m)) <= 1e-5
    orig.fused_attn = True
    assert "op=supernet_kernels" in repr(ours)


def test_module_gradients_match_window_attention(conv):
    """x, qkv, proj and the relative-position table get timm's gradients (with the mask)."""
    model, _ = conv
    orig, mask, x = _window_inputs(model)
    orig = copy.deepcopy(orig)
    ours = SKSwinAttention.from_module(copy.deepcopy(orig))
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    grads = []
    for m in (ours, orig):
        xi = x.clone().requires_grad_(True)
        (m(xi, mask=mask) * g).sum().backward()
        grads.append({"x": xi.grad, **{n: p.grad for n, p in m.named_parameters()}})
    assert grads[0].keys() == grads[1].keys()
    assert grads[0]["relative_position_bias_table"].abs().sum() > 0
    for n, gr in grads[1].items():
        assert rel(grads[0][n], gr) <= 1e-5, n


def test_state_dict_keys_and_parameters_by_reference():
    orig = WindowAttention(24, num_heads=2, window_size=7)
    ours = SKSwinAttention.from_module(orig)
    assert list(ours.state_dict()) == list(orig.state_dict())
    assert "relative_position_index" not in ours.state_dict()
    for k, v in orig.state_dict(keep_vars=True).items():
        assert ours.state_dict(keep_vars=True)[k] is v
    assert ours.relative_position_index is orig.relative_position_index
    assert ours.to("meta").relative_position_index.device.type == "meta"
    with pytest.raises(TypeError, match="expected timm WindowAttention"):
        SKSwinAttention.from_module(nn.Linear(2, 2))


def test_attention_dropout_in_training_falls_back_to_timm():
    torch.manual_seed(0)
    orig = WindowAttention(16, num_heads=2, window_size=3, attn_drop=0.5)
    ours = SKSwinAttention.from_module(copy.deepcopy(orig))
    x = torch.randn(2, 9, 16)
    ours.train()
    with OpCounter() as c:
        y = ours(x)
    assert c.calls == 0 and y.shape == x.shape
    ours.eval()
    orig.eval()
    y, calls = run_counting(ours, x)
    assert calls == 1
    with torch.no_grad():
        assert rel(y, orig(x)) <= 1e-5


def test_set_input_size_after_conversion():
    """timm's set_input_size reaches our module's set_window_size (the table is resized, the
    index rebuilt) and the converted model still equals the original."""
    model = make_swin(img_size=32, embed_dim=16, depths=(2,), num_heads=(2,), window_size=4)
    conv = sk.convert(model).model
    orig = copy.deepcopy(model)
    for m in (conv, orig):
        m.set_input_size(img_size=32, window_size=2)  # img_size too: timm 1.0.29 needs it
    assert conv.layers[0].blocks[0].attn.window_size == (2, 2)
    x = torch.randn(1, 3, 32, 32)
    y, calls = run_counting(conv, x)
    assert calls == 2
    with torch.no_grad():
        assert rel(y, orig(x)) <= 1e-5


# --------------------------------------------------------------------------- converted Swin
def test_max_config_equals_original_through_the_op(conv):
    model, sn = conv
    assert sn.attention == "ours"
    assert sn.attention_modules == _attn_names(model)
    assert uses_our_attention(sn.model)
    x = torch.randn(2, 3, 56, 56)
    y, calls = run_counting(sn, x)
    assert calls == len(_attn_names(model))
    with torch.no_grad():
        assert rel(y, model(x)) <= 1e-5
    assert not any(isinstance(m, SKSwinAttention) for m in model.modules())


def test_state_dict_keys_unchanged(conv):
    model, sn = conv
    orig = sk.convert(model, attention="original")
    assert list(orig.model.state_dict()) == list(sn.model.state_dict())


def test_training_gradients_match_original(conv):
    """Training-mode gradients through the op's backward, relative-position tables included,
    equal timm's, fp32."""
    model, sn = conv
    orig = sk.convert(model, attention="original")
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    grads = []
    for net in (sn, orig):
        net.train()
        net.zero_grad()
        y = net(x)
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        net.eval()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    table = "model.layers.0.blocks.1.attn.relative_position_bias_table"
    assert table in grads[0] and grads[0][table].abs().sum() > 0
    for n, g in grads[1].items():
        assert rel(grads[0][n], g) <= 1e-5, n
    sn.zero_grad(set_to_none=True)


def _triton_or_skip():
    reason = sk.backends.unavailable_reason("triton", torch.device("cpu"))
    if reason:
        pytest.skip(reason)


def test_triton_backend_matches(conv):
    _triton_or_skip()
    model, sn = conv
    x = torch.randn(1, 3, 56, 56)
    with sk.backend("triton"):
        y, calls = run_counting(sn, x)
    assert calls == len(_attn_names(model))
    with torch.no_grad():
        assert rel(y, model(x)) <= 1e-4


def test_triton_backend_training_gradients():
    """The Triton backward (d bias kernel included) on a tiny Swin: 3 x 3 windows (9 tokens),
    4 windows, a shifted block."""
    _triton_or_skip()
    model = make_swin(img_size=24, embed_dim=16, depths=(2,), num_heads=(2,), window_size=3)
    assert model.layers[0].blocks[1].attn_mask is not None
    ours = SKSwinAttention.from_module(copy.deepcopy(model.layers[0].blocks[1].attn))
    conv = copy.deepcopy(model)
    conv.layers[0].blocks[1].attn = ours
    conv.layers[0].blocks[0].attn = SKSwinAttention.from_module(conv.layers[0].blocks[0].attn)
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(6))
    grads = []
    for net, be in ((conv, "triton"), (model, "torch")):
        net.zero_grad()
        xi = x.clone().requires_grad_(True)
        with sk.backend(be), OpCounter() as c:
            net(xi).square().sum().backward()
        grads.append({"x": xi.grad, **{n: p.grad.clone() for n, p in net.named_parameters()}})
        assert c.calls == (2 if be == "triton" else 0)
    assert grads[0].keys() == grads[1].keys()
    table = "layers.0.blocks.1.attn.relative_position_bias_table"
    assert grads[0][table].abs().sum() > 0
    for n, g in grads[1].items():
        assert rel(grads[0][n], g) <= 1e-4, n


# --------------------------------------------------------------------------- extract, save, load
def test_extract_save_load_round_trip(conv, tmp_path):
    model, sn = conv
    cfg = sn.sample_config(3)
    cfg["depth"] = {b: False for b, c in sn.space["depth"].items() if False in c}
    sub = sn.extract(cfg)
    assert sub.sk_subnet["attention"] == "ours"
    attns = [m for m in sub.modules() if isinstance(m, WindowAttention | SKSwinAttention)]
    assert attns and all(isinstance(m, SKSwinAttention) for m in attns)
    x = torch.randn(1, 3, 56, 56)
    y, calls = run_counting(sub, x)
    assert calls == len(attns)
    sn.set_active(cfg)
    try:
        with torch.no_grad():
            assert rel(y, sn(x)) <= 1e-6
    finally:
        sn.set_active(sn.max_config())

    back = sk.load(sk.save(sub, tmp_path / "swin.safetensors"))
    assert back.sk_subnet["attention"] == "ours"
    assert sum(isinstance(m, SKSwinAttention) for m in back.modules()) == len(attns)
    y2, calls = run_counting(back, x)
    assert calls == len(attns)
    assert torch.equal(y2, y)
    # into a skeleton of the original architecture, too
    back2 = sk.load(tmp_path / "swin.safetensors", skeleton=make_swin())
    with torch.no_grad():
        assert torch.equal(back2(x), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_triton_forward_and_table_gradient(dtype):  # pragma: no cover - GPU only
    """The compiled Triton kernels (real tile sizes, d bias kernel) on a converted Swin: output
    and the shifted block's table gradient within twice timm's own error in ``dtype``, against
    timm in float64."""
    if sk.backends.unavailable_reason("triton", torch.device("cuda")):
        pytest.skip("no Triton on this GPU")
    model = make_swin().cuda()
    sn = sk.convert(model)
    x = torch.randn(2, 3, 56, 56, device="cuda")
    table = "layers.0.blocks.1.attn.relative_position_bias_table"

    def run(net, dt, backend):
        net = copy.deepcopy(net).to(dt)
        with sk.backend(backend):
            y = net(x.to(dt))
            y.double().square().mean().backward()
        return y, dict(net.named_parameters())[table].grad

    y64, g64 = run(model, torch.float64, "torch")
    y0, g0 = run(model, dtype, "torch")
    y, g = run(sn.model, dtype, "triton")
    floor = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel(y, y64) <= 2 * max(rel(y0, y64), floor)
    assert rel(g, g64) <= 2 * max(rel(g0, g64), floor)
