"""ElasticLinear / ElasticBlock and MLP neuron importance: slicing, reordering, extraction."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import supernet_kernels as sk
from supernet_kernels.nn import ElasticBlock, ElasticLinear, LowRankLinear, QuantLinear
from supernet_kernels.nn.importance import (
    activation_importance,
    magnitude_importance,
    reorder_mlp,
)


def _linear(k=40, n=30, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(k, n).to(dtype)


def _storages(module: nn.Module) -> set[int]:
    ts = list(module.parameters()) + list(module.buffers())
    return {t.untyped_storage().data_ptr() for t in ts if t.numel()}


# ----------------------------------------------------------------- conversion and slicing
def test_from_linear_dense_reproduces():
    lin = _linear()
    layer = ElasticLinear.from_linear(lin)
    assert layer.max_rank is None and layer.active_rank is None
    x = torch.randn(3, 5, 40)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)


def test_from_linear_full_rank_reproduces():
    lin = _linear()
    layer = ElasticLinear.from_linear(lin, rank_choices=[30, 8, 16, 8])
    assert layer.rank_choices == (8, 16, 30) and layer.max_rank == 30 == layer.active_rank
    assert tuple(layer.u.shape) == (30, 30) and tuple(layer.v.shape) == (30, 40)
    x = torch.randn(3, 5, 40)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)


def test_rank_slice_is_best_approximation():
    """Eckart-Young: the rank-r slice's error is exactly the tail of the singular values."""
    lin = _linear(24, 20, seed=3, dtype=torch.float64)
    layer = ElasticLinear.from_linear(lin, rank_choices=[4, 20])
    s = torch.linalg.svdvals(lin.weight.detach())
    eye = torch.eye(24, dtype=torch.float64)
    prev = float("inf")
    for r in (1, 3, 4, 7, 12, 20):  # any rank in 1..max_rank, not only the choices
        layer.set_active(rank=r)
        with torch.no_grad():
            w_r = (layer(eye) - lin.bias).T
        err = (w_r - lin.weight).norm().item()
        assert err == pytest.approx(s[r:].pow(2).sum().sqrt().item(), rel=1e-6, abs=1e-9)
        assert err <= prev
        prev = err


@pytest.mark.parametrize("factorized", [False, True])
def test_width_slice_equals_manual_slice(factorized):
    lin = _linear(16, 12)
    layer = ElasticLinear.from_linear(lin, rank_choices=[12] if factorized else None)
    layer.set_active(out=7, in_features=10, rank=5 if factorized else None)
    x = torch.randn(4, 10)
    if factorized:
        want = x @ layer.v[:5, :10].T @ layer.u[:7, :5].T + layer.bias[:7]
    else:
        want = x @ lin.weight[:7, :10].T + lin.bias[:7]
    torch.testing.assert_close(layer(x), want)
    with pytest.raises(ValueError, match="active in_features is 10"):
        layer(torch.randn(4, 16))


# ----------------------------------------------------------------- reordering and importance
def _mlp(factorized: bool, hidden=64, d=24, seed=0):
    """fc1 -> gelu -> fc2 with hidden units of very different sizes (a random order)."""
    torch.manual_seed(seed)
    l1, l2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
    with torch.no_grad():
        scale = torch.logspace(0, -2, hidden)[torch.randperm(hidden)]
        l1.weight.mul_(scale[:, None])
        l1.bias.mul_(scale)
        l2.weight.mul_(scale[None, :])
    rc1 = [d] if factorized else None
    rc2 = [d] if factorized else None
    return (
        ElasticLinear.from_linear(l1, rank_choices=rc1),
        ElasticLinear.from_linear(l2, rank_choices=rc2),
    )


def _run(fc1, fc2, x):
    return fc2(torch.nn.functional.gelu(fc1(x)))


@pytest.mark.parametrize("factorized", [False, True])
def test_reorder_keeps_full_width_function(factorized):
    fc1, fc2 = _mlp(factorized)
    x = torch.randn(8, 24)
    with torch.no_grad():
        before = _run(fc1, fc2, x)
        perm = torch.randperm(64)
        fc1.reorder_outputs(perm)
        fc2.reorder_inputs(perm)
        torch.testing.assert_close(_run(fc1, fc2, x), before, rtol=1e-5, atol=1e-6)


def test_reorder_with_lora_keeps_function():
    fc1 = ElasticLinear.from_linear(_linear(12, 20), lora_rank=3)
    fc2 = ElasticLinear.from_linear(_linear(20, 12, seed=1), lora_rank=3)
    with torch.no_grad():
        for p in (fc1.lora_b, fc2.lora_b):
            p.normal_()
    x = torch.randn(5, 12)
    with torch.no_grad():
        before = _run(fc1, fc2, x)
        reorder_mlp(fc1, fc2, torch.randn(20))
        torch.testing.assert_close(_run(fc1, fc2, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["elastic", "linear"])
def test_importance_prefix_beats_random_prefix(kind):
    fc1, fc2 = _mlp(False)
    if kind == "linear":  # the same functions as plain nn.Linear pairs, permuted in place
        lin1, lin2 = nn.Linear(24, 64), nn.Linear(64, 24)
        with torch.no_grad():
            lin1.weight.copy_(fc1.weight), lin1.bias.copy_(fc1.bias)
            lin2.weight.copy_(fc2.weight), lin2.bias.copy_(fc2.bias)
    x = torch.randn(32, 24)
    with torch.no_grad():
        full = _run(fc1, fc2, x)
    scores = magnitude_importance(fc1, fc2)
    if kind == "linear":
        perm = reorder_mlp(lin1, lin2)  # default: magnitude_importance
        assert torch.equal(perm, torch.sort(scores, descending=True, stable=True).indices)
        torch.testing.assert_close(lin1.weight, fc1.weight[perm])
        torch.testing.assert_close(lin2.weight, fc2.weight[:, perm])
        return
    perm = reorder_mlp(fc1, fc2, magnitude_importance)
    # the prefix holds the highest-importance units, in descending order
    assert torch.equal(perm[:16].sort().values, scores.topk(16).indices.sort().values)
    assert (scores[perm][:-1] >= scores[perm][1:]).all()

    def prefix_error(a, b, w=16):
        a.set_active(out=w)
        b.set_active(in_features=w)
        with torch.no_grad():
            err = (_run(a, b, x) - full).norm().item()
        a.set_active(out=64)
        b.set_active(in_features=64)
        return err

    sorted_err = prefix_error(fc1, fc2)
    rnd1, rnd2 = _mlp(False)
    p = torch.randperm(64, generator=torch.Generator().manual_seed(5))
    rnd1.reorder_outputs(p)
    rnd2.reorder_inputs(p)
    assert sorted_err < 0.5 * prefix_error(rnd1, rnd2)


def test_activation_importance_matches_definition_and_hook():
    fc1, fc2 = _mlp(False, hidden=16, d=8)
    xs = [torch.randn(4, 3, 8) * torch.linspace(0.1, 3, 8) for _ in range(2)]
    got = activation_importance(fc1, fc2, lambda: [_run(fc1, fc2, x) for x in xs])
    assert not fc1._forward_pre_hooks and not fc2._forward_pre_hooks  # hooks removed
    x = torch.cat([t.reshape(-1, 8) for t in xs]).double()
    with torch.no_grad():
        h = torch.nn.functional.gelu(fc1(x.float())).double()
    want = fc1.weight.double().abs() @ x.norm(dim=0) + fc2.weight.double().abs().sum(0) * h.norm(
        dim=0
    )
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    # as a user hook in reorder_mlp: the partial is a (fc1, fc2) -> tensor callable
    perm = reorder_mlp(
        fc1, fc2, functools.partial(activation_importance, batches_fn=lambda: _run(fc1, fc2, xs[0]))
    )
    assert sorted(perm.tolist()) == list(range(16))
    with pytest.raises(ValueError, match="size hidden=16"):
        reorder_mlp(fc1, fc2, torch.ones(15))


# ----------------------------------------------------------------- quantization
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("a_bits", [16, 8])
@pytest.mark.parametrize(
    "k,group,active_in,want_group",
    [(96, 32, 96, 32), (100, 128, 100, 100), (96, 32, 80, 80), (96, 32, 64, 32)],
)
def test_fake_quant_forward_equals_extracted_quant_linear(
    bits, a_bits, k, group, active_in, want_group
):
    lin = _linear(k, 24, seed=bits)
    layer = ElasticLinear.from_linear(
        lin, w_bits_choices=(2, 3, 4, 8, 16), a_bits_choices=(8, 16), group_size=group
    )
    layer.set_active(w_bits=bits, a_bits=a_bits, out=20, in_features=active_in)
    assert layer.quant_group_size() == want_group
    q = layer.extract()
    assert isinstance(q, QuantLinear)
    assert (q.bits, q.group_size, q.act_bits) == (bits, want_group, a_bits)
    assert (q.in_features, q.out_features) == (active_in, 20)
    x = torch.randn(6, active_in)
    with torch.no_grad():
        fake = layer(x)
        real = q(x)
    torch.testing.assert_close(fake, real, rtol=1e-5, atol=1e-5)
    # the same codes: the fake-quantized weight is the packed weight's dequantization
    w_fake = layer(torch.eye(active_in)).detach() - layer.bias[:20] if a_bits == 16 else None
    if w_fake is not None:
        torch.testing.assert_close(w_fake.T, q.dequantize(), rtol=0, atol=1e-6)


def test_fake_quant_gradients_straight_through():
    layer = ElasticLinear.from_linear(_linear(64, 16), w_bits_choices=(4,), group_size=32)
    layer(torch.randn(3, 64)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------- LoRA
@pytest.mark.parametrize("factorized", [False, True])
def test_lora_zero_init_frozen_base_and_merge(factorized):
    lin = _linear(20, 16)
    layer = ElasticLinear.from_linear(
        lin, rank_choices=[16] if factorized else None, lora_rank=4, lora_alpha=8
    )
    assert layer.lora_scaling == 2.0 and (layer.lora_b == 0).all()
    x = torch.randn(5, 20)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)
    layer(x).square().sum().backward()
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_a", "lora_b"}
    assert all(p.grad is None for n, p in layer.named_parameters() if n not in trainable)
    assert layer.lora_b.grad.abs().sum() > 0
    with torch.no_grad():
        layer.lora_b.normal_()
        layer.lora_a.normal_()
    layer.set_active(out=11, in_features=17, rank=9 if factorized else None)
    x = torch.randn(5, 17)
    merged = layer.extract()
    assert type(merged) is nn.Linear  # LoRA on a factorized layer merges into a dense layer
    with torch.no_grad():
        torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-5)


def test_lora_with_quantized_base_merges_before_quantizing():
    layer = ElasticLinear.from_linear(
        _linear(64, 16), w_bits_choices=(4, 16), a_bits_choices=(8, 16), lora_rank=2, group_size=32
    )
    with torch.no_grad():
        layer.lora_b.normal_()
    layer.set_active(w_bits=4, a_bits=8)
    x = torch.randn(3, 64)
    q = layer.extract()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), q(x), rtol=1e-5, atol=1e-5)
    layer(x).sum().backward()  # straight through to the adapters
    assert layer.lora_b.grad.abs().sum() > 0


# ----------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    "kwargs,active,cls",
    [
        ({}, {"out": 9, "in_features": 13}, nn.Linear),
        ({"rank_choices": [4, 12]}, {"out": 9, "rank": 4}, LowRankLinear),
        ({"w_bits_choices": (8,), "a_bits_choices": (8,), "group_size": None}, {}, QuantLinear),
    ],
)
def test_extract_copies_and_matches(kwargs, active, cls):
    layer = ElasticLinear.from_linear(_linear(16, 12), **kwargs)
    layer.set_active(**active)
    sub = layer.extract()
    assert type(sub) is cls
    assert not (_storages(sub) & _storages(layer)), "extract() shares storage with the supernet"
    x = torch.randn(4, layer.active_in)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), layer(x), rtol=1e-5, atol=1e-5)
        before = sub(x)
        for p in layer.parameters():
            p.add_(1.0)
        torch.testing.assert_close(sub(x), before)  # the copy is independent


def test_cost_bits_and_active_weight_params():
    dense = ElasticLinear(16, 12, w_bits_choices=(4, 8, 16), a_bits_choices=(8, 16))
    assert dense.cost_bits() == (16, 16) and dense.active_weight_params() == 16 * 12 + 12
    dense.set_active(out=6, in_features=10, w_bits=4, a_bits=8)
    assert dense.cost_bits() == (4, 8) and dense.active_weight_params() == 60 + 6
    fact = ElasticLinear(16, 12, bias=False, rank_choices=[2, 6])
    assert fact.active_rank == 6 and fact.active_weight_params() == 6 * (16 + 12)
    fact.set_active(rank=2, out=8)
    assert fact.active_weight_params() == 2 * (16 + 8)
    assert "rank_choices=(2, 6)" in repr(fact)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"out": 0}, ValueError, r"out must be in 1\.\.12"),
        ({"in_features": 17}, ValueError, r"in_features must be in 1\.\.16"),
        ({"rank": 13}, ValueError, r"rank must be in 1\.\.8"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
        ({"w_bits": 3}, ValueError, r"w_bits must be one of \(4, 16\)"),
        ({"a_bits": 4}, ValueError, r"a_bits must be one of \(8, 16\)"),
        ({"a_bits": 8}, ValueError, "W16A8"),
        ({"w_bits": 4}, ValueError, "quantized low-rank is not supported"),
    ],
)
def test_set_active_rejects_bad_values(kwargs, exc, match):
    layer = ElasticLinear(
        16, 12, rank_choices=[4, 8], w_bits_choices=(4, 16), a_bits_choices=(8, 16)
    )
    with pytest.raises(exc, match=match):
        layer.set_active(**kwargs)
    assert (layer.active_out, layer.active_in, layer.active_rank) == (12, 16, 8)
    assert layer.cost_bits() == (16, 16)  # unchanged


def test_constructor_and_dense_errors():
    with pytest.raises(ValueError, match=r"rank_choices values must be in 1\.\.8"):
        ElasticLinear(8, 10, rank_choices=[9])
    with pytest.raises(ValueError, match="w_bits_choices values must be in"):
        ElasticLinear(8, 10, w_bits_choices=(5,))
    with pytest.raises(ValueError, match="quantized low-rank"):
        ElasticLinear(8, 10, rank_choices=[4], w_bits_choices=(4,))
    with pytest.raises(ValueError, match="rank must be None for a dense layer"):
        ElasticLinear(8, 10).set_active(rank=2)
    with pytest.raises(TypeError, match="expected an nn.Linear"):
        ElasticLinear.from_linear(nn.Conv1d(2, 2, 1))


# ----------------------------------------------------------------- depth
def test_elastic_block_skip_returns_input():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x, scale=1.0):
            return x + scale * self.fc(x)

    blk = ElasticBlock(Residual())
    x = torch.randn(2, 8)
    torch.testing.assert_close(blk(x, scale=0.5), blk.block(x, scale=0.5))
    blk.active = False
    assert blk(x, scale=0.5) is x
    assert blk(x=x) is x
    blk.set_active(True)
    assert not torch.equal(blk(x), x)
    assert isinstance(sk.nn.ElasticBlock(nn.Identity()).block, nn.Identity)


def test_high_rank_runs_and_extracts_dense():
    """FLORA's cost rule: a rank-r layer costs min(in*out, r*(in+out)) per token. Past the
    break-even rank the product of the factors is used as one dense weight."""
    torch.manual_seed(0)
    lin = nn.Linear(48, 40)
    layer = ElasticLinear.from_linear(lin, rank_choices=[8, 40])
    x = torch.randn(5, 48)
    for r, kind in ((8, LowRankLinear), (21, LowRankLinear), (22, nn.Linear), (40, nn.Linear)):
        layer.set_active(rank=r)  # break-even: r * 88 < 1920  <=>  r <= 21
        sub = layer.extract()
        assert type(sub) is kind, r
        torch.testing.assert_close(sub(x), layer(x), rtol=1e-5, atol=1e-5)
        want = min(48 * 40, r * 88) + 40
        assert layer.active_weight_params() == want
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)  # full rank: the original
