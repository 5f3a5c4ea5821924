"""The pipeline's assembly: one expansion per graph, one backend object, one lowering plan."""

from __future__ import annotations

import pytest

import archdsl
from archdsl import pipeline
from archdsl.backends import BACKENDS, TORCH, TRITON, get


def test_load_for_dense_expands_the_net_once(monkeypatch):
    calls = []
    real = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    graph, dense_input = pipeline.load_for_dense("vgg_a", input="3x384x384")
    assert len(calls) == 1 and calls[0] is None  # built at the spec's own 224
    assert graph.input_shape.dims == (3, 224, 224) and dense_input.dims == (3, 384, 384)
    calls.clear()
    graph, dense_input = pipeline.load_for_dense("vgg_a", input="3x224x224")
    assert len(calls) == 1 and dense_input is None


def test_backends_are_objects_named_once():
    assert get("torch") is TORCH and get(TRITON) is TRITON and set(BACKENDS) == {"torch", "triton"}
    assert not TORCH.rules and TRITON.rules and TRITON.kernels
    with pytest.raises(ValueError, match="unknown backend 'cuda'; expected one of torch, triton"):
        archdsl.compile("cifar_resnet", n=1, backend="cuda")
