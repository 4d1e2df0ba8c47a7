"""Projection heads, encoders, the encoder factory and MultiLevelModel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcl.errors import ConfigError
from mlcl.models import (
    MLPEncoder,
    ModelOutput,
    MultiHeadProjector,
    MultiLevelModel,
    ProjectionHead,
    ResNet18,
    SmallCNN,
    build_encoder,
)


def _randomise_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm affine parameters and running statistics, so the comparisons mean something."""
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm1d):
            n = norm.num_features
            norm.weight.data = torch.rand(n, generator=generator) + 0.5
            norm.bias.data = torch.randn(n, generator=generator)
            norm.running_mean = torch.randn(n, generator=generator)
            norm.running_var = torch.rand(n, generator=generator) + 0.5


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_projector_equals_independent_heads(depth: int, train: bool) -> None:
    generator = torch.Generator().manual_seed(depth)
    heads = [ProjectionHead(12, hidden_dim=16, out_dim=8, depth=depth) for _ in range(3)]
    for head in heads:
        _randomise_norms(head, generator)
    projector = MultiHeadProjector.from_heads(heads, head_names=["coarse", "fine", "instance"])
    for module in [*heads, projector]:
        module.train(train)
    x = torch.randn(10, 12, generator=generator)
    x_heads, x_proj = x.clone().requires_grad_(), x.clone().requires_grad_()

    expected = torch.stack([head(x_heads) for head in heads])
    got = projector(x_proj)
    assert got.shape == (3, 10, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    upstream = torch.randn(3, 10, 8, generator=generator)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    torch.testing.assert_close(x_proj.grad, x_heads.grad, rtol=1e-5, atol=1e-5)
    first_head_weight_grad = heads[1].net[0].weight.grad.T
    torch.testing.assert_close(projector.weights[0].grad[1], first_head_weight_grad, rtol=1e-5, atol=1e-5)
    if train and depth > 1:  # BatchNorm running statistics were updated the same way
        hidden = 16
        torch.testing.assert_close(projector.norms[0].running_mean[hidden : 2 * hidden], heads[1].net[1].running_mean)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_projector_output_is_contiguous(depth: int) -> None:
    out = MultiHeadProjector(6, 3, hidden_dim=5, out_dim=4, depth=depth)(torch.randn(7, 6))
    assert out.shape == (3, 7, 4) and out.is_contiguous()  # callers .view it as (H, B, V, D)


def test_projection_head_structure() -> None:
    assert [type(m) for m in ProjectionHead(4, 8, 2, depth=1).net] == [nn.Linear]
    layers = [type(m) for m in ProjectionHead(4, 8, 2, depth=2).net]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_projector_defaults_and_gradients() -> None:
    projector = MultiHeadProjector(32, n_heads=4)
    assert projector.head_names == ["head0", "head1", "head2", "head3"]
    out = projector(torch.randn(6, 32))
    assert out.shape == (4, 6, 128)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_dim": 0, "n_heads": 2}, "in_dim"),
        ({"in_dim": 4, "n_heads": 0}, "n_heads"),
        ({"in_dim": 4, "n_heads": 2, "depth": 0}, "depth"),
        ({"in_dim": 4, "n_heads": 2, "hidden_dim": 2.5}, "hidden_dim"),
        ({"in_dim": 4, "n_heads": 2, "head_names": ["a"]}, "head_names"),
        ({"in_dim": 4, "n_heads": 2, "head_names": ["a", "a"]}, "distinct"),
    ],
)
def test_projector_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiHeadProjector(**kwargs)


def test_projector_rejects_wrong_input_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        MultiHeadProjector(8, 2)(torch.randn(3, 7))


def test_from_heads_rejects_mismatched_heads() -> None:
    with pytest.raises(ConfigError, match="head 1"):
        MultiHeadProjector.from_heads([ProjectionHead(4, 8, 2), ProjectionHead(4, 8, 3)])


@pytest.mark.parametrize("size", [28, 8, 33])
def test_small_cnn_shapes_and_gradients(size: int) -> None:
    model = SmallCNN(in_channels=1, width=8, out_dim=16)
    x = torch.rand(4, 1, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 16) and model.out_dim == 16
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_resnet18_shapes_and_structure() -> None:
    model = ResNet18(in_channels=3, width=4)
    assert model.out_dim == 32
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 32)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 17 + 3  # 17 conv layers + 3 shortcuts


def test_resnet18_standard_size() -> None:
    params = sum(p.numel() for p in ResNet18().parameters())
    assert 11.0e6 < params < 11.3e6  # the CIFAR ResNet-18 without its classifier: ~11.17M


def test_mlp_encoder_flattens_and_projects() -> None:
    model = MLPEncoder(64, hidden=(32, 16), out_dim=8)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 8)
    assert MLPEncoder(3, hidden=(), out_dim=2)(torch.rand(4, 3)).shape == (4, 2)


def test_build_encoder() -> None:
    model = build_encoder("small_cnn", width=4, out_dim=10)
    assert isinstance(model, SmallCNN) and model.out_dim == 10
    assert isinstance(build_encoder("mlp", in_dim=5), MLPEncoder)


def test_build_encoder_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_encoder("resnet_18")
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        build_encoder("small_cnn", widht=3)
    with pytest.raises(ConfigError, match="in_dim"):
        build_encoder("mlp")  # required argument missing
    with pytest.raises(ConfigError, match="width"):
        build_encoder("resnet18", width=-1)


def test_multilevel_model_outputs_and_gradients() -> None:
    encoder = MLPEncoder(10, hidden=(16,), out_dim=12)
    model = MultiLevelModel(encoder, MultiHeadProjector(12, 2, hidden_dim=8, out_dim=4), {"coarse": 3, "fine": 7})
    out = model(torch.randn(5, 10))
    assert isinstance(out, ModelOutput)
    assert out.features.shape == (5, 12) and out.projections.shape == (2, 5, 4)
    assert {k: v.shape for k, v in out.logits.items()} == {"coarse": (5, 3), "fine": (5, 7)}
    torch.testing.assert_close(model.encode(torch.ones(2, 10)), encoder(torch.ones(2, 10)))

    out.logits["fine"].sum().backward()
    assert encoder.net[0].weight.grad is not None


def test_detached_classifiers_do_not_train_the_encoder() -> None:
    encoder = MLPEncoder(10, hidden=(), out_dim=12)
    model = MultiLevelModel(encoder, MultiHeadProjector(12, 1), {"fine": 3}, detach_classifiers=True)
    model(torch.randn(5, 10)).logits["fine"].sum().backward()
    assert encoder.net[0].weight.grad is None
    assert model.classifiers["fine"].weight.grad is not None


def test_multilevel_model_without_projector() -> None:
    model = MultiLevelModel(MLPEncoder(10, out_dim=12), None, {"fine": 3})
    out = model(torch.randn(4, 10))
    assert out.projections is None and out.logits["fine"].shape == (4, 3)


def test_multilevel_model_errors() -> None:
    with pytest.raises(ConfigError, match="out_dim=12"):
        MultiLevelModel(MLPEncoder(10, out_dim=12), MultiHeadProjector(16, 2))
    with pytest.raises(ConfigError, match="'fine'"):
        MultiLevelModel(MLPEncoder(10, out_dim=12), MultiHeadProjector(12, 2), {"fine": 0})
