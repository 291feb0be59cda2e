"""LowRankLinear and ElasticLowRankLinear: conversion from nn.Linear, SVD weight inheritance."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_matches, backend_params

import supernet_kernels as sk


def _linear(k=40, n=30, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n)


@pytest.mark.parametrize("cls", [sk.nn.LowRankLinear, sk.nn.ElasticLowRankLinear])
def test_full_rank_reproduces_linear(cls):
    lin = _linear()
    layer = cls.from_linear(lin, 30)
    x = torch.randn(3, 7, 40)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)


def test_svd_factors_balance_singular_values():
    w = torch.randn(12, 9, dtype=torch.float64)
    u, v = sk.nn.svd_factors(w, 4)
    # sqrt(s) on each side: column norms of u equal row norms of v
    torch.testing.assert_close(u.norm(dim=0), v.norm(dim=1))
    s = torch.linalg.svdvals(w)
    torch.testing.assert_close(u.norm(dim=0) ** 2, s[:4])


def test_elastic_rank_is_best_approximation():
    """Eckart-Young: the rank-r slice's error is exactly the tail of the singular values."""
    lin = _linear(24, 20, seed=3).double()
    layer = sk.nn.ElasticLowRankLinear.from_linear(lin)
    s = torch.linalg.svdvals(lin.weight.detach())
    eye = torch.eye(24, dtype=torch.float64)
    prev = float("inf")
    for r in range(1, 21):
        layer.set_rank(r)
        w_r = (layer(eye) - lin.bias).T  # the effective weight at rank r
        err = (w_r - lin.weight).norm().item()
        want = s[r:].pow(2).sum().sqrt().item()
        assert err == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert err <= prev
        prev = err


def test_elastic_width_slices():
    lin = _linear(16, 12)
    layer = sk.nn.ElasticLowRankLinear.from_linear(lin)
    layer.set_active(rank=5, out_features=7, in_features=10)
    x = torch.randn(4, 10)
    want = x @ layer.v[:5, :10].T @ layer.u[:7, :5].T + layer.bias[:7]
    torch.testing.assert_close(layer(x), want)
    with pytest.raises(ValueError, match="active in_features is 10"):
        layer(torch.randn(4, 16))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"rank": 0}, ValueError, r"rank must be in 1\.\.12"),
        ({"rank": 13}, ValueError, r"rank must be in 1\.\.12"),
        ({"out_features": 13}, ValueError, r"out_features must be in 1\.\.12"),
        ({"in_features": 17}, ValueError, r"in_features must be in 1\.\.16"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
    ],
)
def test_set_active_rejects_bad_values(kwargs, exc, match):
    layer = sk.nn.ElasticLowRankLinear(16, 12)
    with pytest.raises(exc, match=match):
        layer.set_active(**kwargs)
    assert layer.active_rank == 12  # unchanged


def test_constructor_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank must be in 1..8"):
        sk.nn.LowRankLinear(8, 10, 9)
    with pytest.raises(ValueError, match="max_rank must be in 1..8"):
        sk.nn.ElasticLowRankLinear(8, 10, 0)
    with pytest.raises(ValueError, match="svd_factors: rank"):
        sk.nn.svd_factors(torch.randn(4, 5), 6)


def test_elastic_gradients_only_in_active_slices():
    layer = sk.nn.ElasticLowRankLinear.from_linear(_linear(16, 12))
    layer.set_active(rank=4, out_features=9)
    layer(torch.randn(5, 16)).square().sum().backward()
    assert (layer.u.grad[9:] == 0).all() and (layer.u.grad[:, 4:] == 0).all()
    assert (layer.v.grad[4:] == 0).all() and (layer.bias.grad[9:] == 0).all()
    assert layer.u.grad[:9, :4].abs().sum() > 0


def test_state_dict_round_trip():
    a = sk.nn.ElasticLowRankLinear.from_linear(_linear())
    b = sk.nn.ElasticLowRankLinear(40, 30)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 40)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("device,be", backend_params("lowrank_linear"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_layer_on_every_backend(device, be, dtype):
    lin = _linear(20, 18).to(device)
    layer = sk.nn.ElasticLowRankLinear.from_linear(lin).to(dtype)
    layer.set_active(rank=7, out_features=13)
    x = torch.randn(3, 20, device=device, dtype=dtype)
    with torch.no_grad():
        with sk.backend("torch"):
            plain = layer(x)
        ref = torch.nn.functional.linear(
            torch.nn.functional.linear(x.double(), layer.v[:7].double()),
            layer.u[:13, :7].double(),
            layer.bias[:13].double(),
        )
        with sk.backend(be):
            got = layer(x)
    assert_matches(got, ref, plain, f"{be} layer")
