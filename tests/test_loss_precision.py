"""The low-precision path (bfloat16 / float16 matmuls, float32 statistics), autocast, loss scaling,
torch.compile, and the device-aware block policy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcl import MultiLevelSupConLoss, SupConLoss
from mlcl.losses import MulSupConLoss, fused
from mlcl.losses.precision import operand_dtype

LOW = [torch.bfloat16, torch.float16]


def correlated_case(seed: int, heads=3, batch=256, dims=64):
    """Two views per sample that resemble each other, labels of 5 / 20 / 100 classes (like training)."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randn(heads, batch, dims, generator=gen, dtype=torch.float64)
    second = first + 0.5 * torch.randn(heads, batch, dims, generator=gen, dtype=torch.float64)
    labels = torch.stack([torch.randint(0, c, (batch,), generator=gen) for c in (5, 20, 100)[:heads]], 1)
    return torch.stack([first, second], 2), labels


def loss_and_grad(loss_fn, z, labels, autocast_dtype=None):
    z = z.detach().clone().requires_grad_(True)
    if autocast_dtype is None:
        value = loss_fn(z, labels)
    else:
        with torch.autocast("cpu", dtype=autocast_dtype):
            value = loss_fn(z, labels)
    value.backward()
    return value.detach(), z.grad


def record_matmul_dtypes(monkeypatch) -> set:
    seen = set()
    bmm = torch.bmm

    def recording_bmm(a, b, **kwargs):
        seen.add(a.dtype)
        return bmm(a, b, **kwargs)

    monkeypatch.setattr(fused.torch, "bmm", recording_bmm)
    return seen


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("temperatures", [[0.1, 0.1, 0.1], [0.5, 0.2, 0.07], [0.01, 0.02, 0.05]])
@pytest.mark.parametrize("block_size", [None, 100])
def test_low_precision_matches_float64(dtype, temperatures, block_size):
    # τ = 0.01 and 0.02 exceed every low-precision fixed-shift limit: they take the two-pass row-max path.
    z, labels = correlated_case(0)
    ref, ref_grad = loss_and_grad(MultiLevelSupConLoss(temperatures), z, labels)
    value, grad = loss_and_grad(MultiLevelSupConLoss(temperatures, block_size=block_size), z.to(dtype), labels)
    assert value.dtype == torch.float32 and grad.dtype == dtype
    assert abs(value.double() - ref) / ref < 1e-3
    assert F.cosine_similarity(grad.double().flatten(), ref_grad.flatten(), dim=0) > 0.9995


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_inputs_run_the_matmuls_in_their_dtype(dtype, monkeypatch):
    seen = record_matmul_dtypes(monkeypatch)
    z, labels = correlated_case(1, batch=32)
    MultiLevelSupConLoss([0.1, 0.1, 0.01])(z.to(dtype).requires_grad_(True), labels).backward()
    assert seen == {dtype}


def test_float32_and_float64_keep_their_matmul_dtype(monkeypatch):
    seen = record_matmul_dtypes(monkeypatch)
    z, labels = correlated_case(1, batch=32)
    for dtype in (torch.float32, torch.float64):
        MultiLevelSupConLoss([0.1, 0.1, 0.01])(z.to(dtype).requires_grad_(True), labels).backward()
    assert seen == {torch.float32, torch.float64}


@pytest.mark.parametrize("autocast_dtype", LOW)
def test_autocast_on_cpu_computes_in_the_autocast_dtype(autocast_dtype, monkeypatch):
    z, labels = correlated_case(2)
    ref, ref_grad = loss_and_grad(MultiLevelSupConLoss([0.1, 0.2, 0.05]), z, labels)
    seen = record_matmul_dtypes(monkeypatch)
    value, grad = loss_and_grad(MultiLevelSupConLoss([0.1, 0.2, 0.05]), z.float(), labels, autocast_dtype)
    assert seen == {autocast_dtype}
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    assert abs(value.double() - ref) / ref < 1e-3
    assert F.cosine_similarity(grad.double().flatten(), ref_grad.flatten(), dim=0) > 0.9995


def test_operand_dtype_follows_autocast_only_for_float32():
    z32, z64 = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    assert operand_dtype(z32) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert operand_dtype(z32) == torch.bfloat16
        assert operand_dtype(z64) == torch.float64  # autocast leaves float64 alone
    assert operand_dtype(z32.half()) == torch.float16


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("temperature", [0.01, 0.1])
@pytest.mark.parametrize("sum_limit", [fused.FLOAT16_SUM_LIMIT, 64])
def test_collapsed_embeddings_in_low_precision_stay_finite(dtype, temperature, sum_limit, monkeypatch):
    # All rows equal: every softmax term is as large as it can be, the worst case for float16's range.
    # A limit of 64 makes 1024 rows need float16's headroom scaling (on a GPU: more than 21845 rows).
    monkeypatch.setattr(fused, "FLOAT16_SUM_LIMIT", sum_limit)
    batch = 512
    z = torch.ones(1, batch, 2, 8, dtype=dtype)
    labels = torch.randint(0, 3, (batch, 1), generator=torch.Generator().manual_seed(0))
    value, grad = loss_and_grad(MultiLevelSupConLoss([temperature], block_size=256), z, labels)
    ref, _ = loss_and_grad(MultiLevelSupConLoss([temperature]), z.double(), labels)
    assert torch.isfinite(value) and torch.isfinite(grad.float()).all()
    torch.testing.assert_close(value.double(), ref, rtol=1e-3, atol=1e-3)


def test_mulsupcon_low_precision_matches_float64():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(64, 2, 16, generator=gen, dtype=torch.float64)
    multi_hot = (torch.rand(64, 6, generator=gen) < 0.3).long()
    loss_fn = MulSupConLoss(temperature=0.1)
    ref, ref_grad = loss_and_grad(loss_fn, z, multi_hot)
    value, grad = loss_and_grad(loss_fn, z.bfloat16(), multi_hot)
    assert abs(value.double() - ref) / ref < 2e-3
    assert F.cosine_similarity(grad.double().flatten(), ref_grad.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("autocast_dtype", LOW)
def test_a_training_step_with_loss_scaling_under_autocast(autocast_dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2 * 8))
    loss_fn = MultiLevelSupConLoss([0.1, 0.3])
    x, labels = torch.randn(64, 16), torch.randint(0, 3, (32, 2))

    def loss_of(net):
        with torch.autocast("cpu", dtype=autocast_dtype):
            return loss_fn(net(x).view(32, 2, 2, 8).permute(2, 0, 1, 3), labels)

    plain = [g.clone() for g in torch.autograd.grad(loss_of(model), list(model.parameters()))]
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(loss_of(model)).backward()
    for p, g in zip(model.parameters(), plain):  # the scaled gradients are the loss's times the scale
        assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad / 2.0**12, g, rtol=1e-3, atol=1e-6)
    scaler.step(optimizer)
    scaler.update()
    for b, p, g in zip(before, model.parameters(), plain):  # the step used the unscaled gradient
        torch.testing.assert_close(p.detach(), b - 0.1 * g, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_a_compiled_model_and_loss_step_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2 * 8))
    loss_fn = MultiLevelSupConLoss([0.1, 0.2])

    def step(x, labels):
        return loss_fn(model(x).view(32, 2, 2, 8).permute(2, 0, 1, 3), labels)

    x, labels = torch.randn(64, 16), torch.randint(0, 3, (32, 2))
    compiled = torch.compile(step)
    eager_loss = step(x, labels)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    for _ in range(2):  # the second call reuses the compiled graph
        compiled_loss = compiled(x, labels)
        compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_supcon_under_autocast_with_an_in_place_free_kernel():
    # Regression: the kernel's in-place baddbmm_ once failed inside autocast (mixed input dtypes).
    z, labels = correlated_case(4, heads=1, batch=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = SupConLoss(0.1)(z[0].float().requires_grad_(True), labels[:, 0])
    assert torch.isfinite(value)


class TestBlockPolicy:
    def test_cpu_blocks_hold_a_fixed_number_of_similarities(self):
        rows = fused.block_rows(3, 4096, 4096, None, torch.device("cpu"), torch.float32)
        assert rows == fused.CPU_BLOCK_ELEMENTS // (3 * 4096)

    def test_cuda_blocks_take_a_share_of_free_memory(self, monkeypatch):
        monkeypatch.setattr(fused, "free_device_memory", lambda device: 16 << 30)  # a 16 GiB card, free
        cuda = torch.device("cuda", 0)
        budget = int(fused.CUDA_BLOCK_MEMORY_FRACTION * (16 << 30))
        assert fused.block_rows(3, 32768, 32768, None, cuda, torch.float32) == budget // 4 // (3 * 32768)
        assert fused.block_rows(3, 32768, 32768, None, cuda, torch.bfloat16) == budget // 2 // (3 * 32768)

    def test_cuda_blocks_are_capped_and_never_empty(self, monkeypatch):
        cuda = torch.device("cuda", 0)
        monkeypatch.setattr(fused, "free_device_memory", lambda device: 1 << 40)  # 1 TiB free: the cap rules
        assert fused.block_rows(3, 262144, 262144, None, cuda, torch.float32) == fused.CUDA_MAX_BLOCK_BYTES // 4 // (
            3 * 262144
        )
        monkeypatch.setattr(fused, "free_device_memory", lambda device: 0)  # nothing free: one row at a time
        assert fused.block_rows(3, 262144, 262144, None, cuda, torch.float32) == 1

    def test_a_small_batch_is_one_block_and_block_size_overrides(self, monkeypatch):
        monkeypatch.setattr(fused, "free_device_memory", lambda device: 16 << 30)
        cuda = torch.device("cuda", 0)
        assert fused.block_rows(3, 2048, 2048, None, cuda, torch.float32) == 2048
        assert fused.block_rows(3, 2048, 2048, 100, cuda, torch.float32) == 100
