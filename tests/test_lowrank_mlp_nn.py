"""The fused MLP block in converted models: a tiny timm ViT and a SAM image encoder run their MLP
blocks through ``lowrank_mlp`` where both linears are low-rank, and equal their unfused forward
(and the original model at the max config)."""

from __future__ import annotations

import pytest
import torch
from helpers.dispatch import count_op_calls
from helpers.models import tiny_sam_encoder, tiny_timm_vit
from helpers.numerics import rel_norm
from torch import nn

import supernet_kernels as sk
from supernet_kernels.nn.elastic import ElasticLinear
from supernet_kernels.nn.mlp import activation_name, fuse_mlp, is_fused

pytestmark = pytest.mark.usefixtures("one_thread")
MLP_OP = "supernet_kernels.lowrank_mlp.default"


def _vit():
    pytest.importorskip("timm")
    return tiny_timm_vit(img_size=32, embed_dim=32, depth=2, num_heads=2)


def _sam():
    pytest.importorskip("segment_anything")
    return tiny_sam_encoder(depth=2)


MODELS = {
    # (model, its MLP linears, full rank (the embedding width), input)
    "timm_vit": (_vit, "blocks.*.mlp.fc*", 32, lambda: torch.randn(2, 3, 32, 32)),
    "sam": (_sam, "blocks.*.mlp.lin*", 64, lambda: torch.randn(1, 3, 64, 64)),
}


def _low_rank(sn, pattern_fc1: str, pattern_fc2: str, rank: int) -> dict:
    cfg = sn.max_config()
    for n in cfg["linear"]:
        if n.endswith(pattern_fc1) or n.endswith(pattern_fc2):
            cfg["linear"][n] = dict(cfg["linear"][n], rank=rank)
    return cfg


def _unfused(sn, x):
    """The model with every MLP on its own forward (the fused forward switched off)."""
    saved = {}
    for name, m in sn.model.named_modules():
        if is_fused(m):
            saved[name] = m.__dict__.pop("forward")
    try:
        with torch.no_grad():
            return sn(x)
    finally:
        for name, f in saved.items():
            sn.model.get_submodule(name).forward = f


@pytest.mark.parametrize("family", list(MODELS))
def test_converted_model_fuses_low_rank_mlps(family):
    make, pattern, full, inputs = MODELS[family]
    model = make()
    space = {"linear": {pattern: {"rank": [4, 8, full]}}}
    sn = sk.convert(model, space)
    names = {n for n, m in sn.model.named_modules() if is_fused(m)}
    assert names == set(sn._layout.mlps), "every MLP module gets the fused forward"
    torch.manual_seed(1)
    x = inputs()

    # Max config (full rank, the linears run dense): the module's own forward, the original.
    with torch.no_grad():
        ref = model(x)
    out, calls = count_op_calls(sn, x, MLP_OP)
    assert calls == 0 and rel_norm(out, ref) <= 1e-5

    fc1, fc2 = ("fc1", "fc2") if family == "timm_vit" else ("lin1", "lin2")
    sn.set_active(_low_rank(sn, fc1, fc2, 4))
    out, calls = count_op_calls(sn, x, MLP_OP)
    assert calls == len(sn._layout.mlps)
    assert rel_norm(out, _unfused(sn, x)) <= 1e-5

    # Only fc1 low-rank: unfused.
    cfg = sn.max_config()
    for n in cfg["linear"]:
        if n.endswith(fc1):
            cfg["linear"][n] = dict(cfg["linear"][n], rank=4)
    sn.set_active(cfg)
    _, calls = count_op_calls(sn, x, MLP_OP)
    assert calls == 0


def test_fused_forward_on_triton_interpreter():
    """The same block through the Triton kernels (CPU interpreter)."""
    if sk.backends.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("Triton needs TRITON_INTERPRET=1 on the CPU")
    mlp = _elastic_mlp(12, 40, rank=5, hidden=29)
    x = torch.randn(3, 7, 12)
    with torch.no_grad():
        want = type(mlp).forward(mlp, x)
        with sk.backend("triton"):
            got = mlp(x)
    assert rel_norm(got, want) <= 1e-5


def _elastic_mlp(k, h, rank, hidden, act=None):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(k, h), act or nn.GELU(), nn.Dropout(0.1), nn.Linear(h, k))
    mlp.eval()
    for i in (0, 3):
        mlp[i] = ElasticLinear.from_linear(mlp[i], rank_choices=[rank, min(k, h)])
        mlp[i].set_active(rank=rank)
    mlp[0].set_active(out=hidden)
    mlp[3].set_active(in_features=hidden)
    assert fuse_mlp(mlp, "0", "3")
    return mlp


@pytest.mark.parametrize(
    "act,name",
    [(nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.ReLU(), "relu")],
)
def test_generic_mlp_every_activation(act, name):
    assert activation_name(act) == name
    mlp = _elastic_mlp(10, 24, rank=3, hidden=17, act=act)
    x = torch.randn(5, 10)
    with torch.no_grad(), sk.backend("torch"):
        got, calls = count_op_calls(mlp, x, MLP_OP)
        want = type(mlp).forward(mlp, x)
    assert calls == 1 and rel_norm(got, want) <= 1e-5


def test_training_dropout_unfuses():
    mlp = _elastic_mlp(10, 24, rank=3, hidden=17)
    mlp.train()
    _, calls = count_op_calls(mlp, torch.randn(5, 10), MLP_OP)
    assert calls == 0


def test_unfusable_modules_are_left_alone():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 4))
    assert not fuse_mlp(mlp, "0", "2")  # plain linears
    for i in (0, 2):
        mlp[i] = ElasticLinear.from_linear(mlp[i], rank_choices=[2, 4])
    assert not fuse_mlp(mlp, "0", "2")  # SiLU has no fused form
    assert not is_fused(mlp)


def test_fused_module_pickles_and_copies():
    import copy
    import io

    mlp = _elastic_mlp(10, 24, rank=3, hidden=17)
    x = torch.randn(2, 10)
    for clone in (copy.deepcopy(mlp), _pickle_round_trip(mlp, io)):
        assert is_fused(clone) and clone.forward.module is clone
        with torch.no_grad():
            torch.testing.assert_close(clone(x), mlp(x))


def _pickle_round_trip(m, io):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_gradients_flow_through_fused_block():
    mlp = _elastic_mlp(10, 24, rank=3, hidden=17)
    x = torch.randn(4, 10, requires_grad=True)
    with sk.backend("torch"):
        mlp(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in mlp.named_parameters()}
    for p in mlp.parameters():
        p.grad = None
    x2 = x.detach().clone().requires_grad_(True)
    type(mlp).forward(mlp, x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for n, p in mlp.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


def test_hooks_and_profilers_see_both_linears():
    """A forward hook on a linear, or a profiler's global module hooks, unfuse the block: the
    profile of a low-rank MLP counts its two linears (a fused block would count as zero)."""
    from supernet_kernels.cost import profile

    mlp = _elastic_mlp(10, 24, rank=3, hidden=17)
    x = torch.randn(5, 10)
    seen = []
    h = mlp[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad(), sk.backend("torch"):
            _, calls = count_op_calls(mlp, x, MLP_OP)
    finally:
        h.remove()
    assert calls == 0 and seen == [torch.Size([5, 17])]
    prof = profile(mlp, (5, 10))
    assert prof.total_macs == 5 * 3 * (10 + 17) + 5 * 3 * (17 + 10)
