"""The multi-level loss against a brute-force per-pair loop, peers, invariances and its error paths."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import dense_from_labels, reference_loss

from mlcl import MultiLevelSupConLoss, NTXentLoss, SupConLoss, multilevel_supcon, relations


def random_case(seed: int, heads=3, batch=7, views=2, dims=5, classes=3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(heads, batch, views, dims, generator=gen, dtype=torch.float64)
    labels = torch.randint(-1, classes, (batch, heads), generator=gen)
    temps = (torch.rand(heads, generator=gen, dtype=torch.float64) * 0.9 + 0.1).tolist()
    weights = (torch.rand(heads, generator=gen, dtype=torch.float64) * 2).tolist()
    return z, labels, temps, weights


def grad_of(fn, z):
    z = z.detach().clone().requires_grad_(True)
    value = fn(z)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach(), grad


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("block_size", [None, 1, 4])
@pytest.mark.parametrize("seed", range(3))
def test_class_labels_match_brute_force(views, block_size, seed):
    z, labels, temps, weights = random_case(seed, views=views)
    loss_fn = MultiLevelSupConLoss(temps, weights, block_size=block_size)
    value, grad = grad_of(lambda x: loss_fn(x, labels), z)
    ref_value, ref_grad = grad_of(
        lambda x: reference_loss(x, dense_from_labels(labels), temps, weights, labelled=labels.t() >= 0)[0], z
    )
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_soft_weights_and_anchor_mask_match_brute_force(views, seed):
    z, _, temps, weights = random_case(seed, views=views)
    gen = torch.Generator().manual_seed(100 + seed)
    pos = torch.rand(3, 7, 7, generator=gen, dtype=torch.float64)
    pos[0] = 0  # head 0: only own views are positive (instance head)
    pos[1, :, 2] = 0
    pos[1, 2, :] = 0  # sample 2 has no label-positive at head 1
    mask = torch.rand(3, 7, generator=gen) > 0.3
    loss_fn = MultiLevelSupConLoss(temps, weights, block_size=3)
    value, grad = grad_of(lambda x: loss_fn(x, pos, mask), z)
    ref_value, ref_grad = grad_of(lambda x: reference_loss(x, pos, temps, weights, anchor_mask=mask)[0], z)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_per_head_losses_are_kept_for_logging():
    z, labels, temps, weights = random_case(0)
    loss_fn = MultiLevelSupConLoss(temps, weights)
    total = loss_fn(z, labels)
    _, ref_heads = reference_loss(z, dense_from_labels(labels), temps, weights, labelled=labels.t() >= 0)
    torch.testing.assert_close(loss_fn.last_head_losses, ref_heads)
    assert not loss_fn.last_head_losses.requires_grad
    torch.testing.assert_close(total, (loss_fn.last_head_losses * torch.tensor(weights, dtype=torch.float64)).sum())


def test_single_head_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(32, 2, 16, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (32,), generator=gen)
    ours, our_grad = grad_of(lambda x: SupConLoss(temperature=0.2)(x, labels), z)
    theirs, their_grad = grad_of(
        lambda x: pml.SupConLoss(temperature=0.2)(x.reshape(64, 16), labels.repeat_interleave(2)), z
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-8, atol=1e-10)


def test_simclr_is_the_all_zero_relation():
    z, _, _, _ = random_case(1, heads=1)
    ours = NTXentLoss(temperature=0.3)(z[0])
    ref, _ = reference_loss(z, torch.zeros(1, 7, 7, dtype=torch.float64), [0.3], [1.0])
    torch.testing.assert_close(ours, ref)


def test_gradcheck_including_learnable_temperatures():
    z, labels, temps, weights = random_case(2, heads=2, batch=5, dims=4)
    loss_fn = MultiLevelSupConLoss(temps, weights, learnable_temperatures=True, block_size=3)
    log_t = loss_fn.log_temperatures

    def fn(x, log_temperatures):
        total, _ = multilevel_supcon(x, labels, log_temperatures.exp(), loss_fn.weights, block_size=3)
        return total

    assert torch.autograd.gradcheck(fn, (z.requires_grad_(True), log_t.detach().clone().requires_grad_(True)))
    loss_fn(z, labels).backward()
    assert log_t.grad is not None and torch.isfinite(log_t.grad).all() and log_t.grad.abs().sum() > 0


def test_gradcheck_soft_relation():
    z, _, temps, weights = random_case(3, heads=2, batch=4, dims=3)
    pos = torch.rand(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fn = lambda x: multilevel_supcon(x, pos, torch.tensor(temps), torch.tensor(weights))[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z.requires_grad_(True),))


def test_float32_agrees_with_float64():
    z, labels, temps, weights = random_case(4, batch=64, dims=32, classes=5)
    loss_fn = MultiLevelSupConLoss(temps, weights)
    v64, g64 = grad_of(lambda x: loss_fn(x, labels), z)
    v32, g32 = grad_of(lambda x: loss_fn(x, labels), z.float())
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "shape,temperature",
    [((2, 8, 2, 4), 0.01), ((2, 8, 1, 4), 0.1), ((2, 1, 1, 4), 0.1), ((2, 1, 2, 4), 0.1), ((1, 1, 3, 4), 0.01)],
)
def test_no_nan_or_inf_in_edge_cases(shape, temperature):
    z = torch.randn(shape) * 50
    labels = torch.arange(shape[1]).repeat(shape[0], 1).t() % 3
    loss_fn = MultiLevelSupConLoss([temperature] * shape[0])
    value, grad = grad_of(lambda x: loss_fn(x, labels), z)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_all_equal_embeddings_and_no_positives_give_finite_values():
    equal = torch.ones(2, 6, 2, 4)
    loss_fn = MultiLevelSupConLoss([0.01, 0.5])
    value, grad = grad_of(lambda x: loss_fn(x, torch.zeros(6, 2, dtype=torch.long)), equal)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # One view and unique labels: no anchor has a positive, so the loss is exactly 0, never NaN.
    single_view = torch.randn(2, 6, 1, 4)
    value, grad = grad_of(lambda x: loss_fn(x, torch.arange(6).repeat(2, 1).t()), single_view)
    assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_unlabelled_samples_are_no_anchor_and_nobodys_positive():
    z, _, temps, weights = random_case(5, heads=1, batch=6, views=2)
    labels = torch.tensor([[0], [0], [-1], [1], [1], [-1]])
    value = MultiLevelSupConLoss(temps, weights)(z, labels)
    pos = dense_from_labels(labels)
    assert pos[0, 2].sum() == 0 and pos[0, :, 2].sum() == 0
    mask = (labels.t() >= 0)
    ref, _ = reference_loss(z, pos, temps, weights, anchor_mask=mask)
    torch.testing.assert_close(value, ref)
    # The unlabelled sample's embedding still matters: it is a negative of every anchor.
    moved = z.clone()
    moved[:, 2] = torch.randn_like(moved[:, 2])
    assert not torch.isclose(MultiLevelSupConLoss(temps, weights)(moved, labels), value)


def test_class_labels_equal_same_class_relation_with_unlabelled_masked():
    z, labels, temps, weights = random_case(6)
    from_labels = MultiLevelSupConLoss(temps, weights)(z, labels)
    from_relation = MultiLevelSupConLoss(temps, weights)(z, relations.same_class(labels), labels.t() >= 0)
    torch.testing.assert_close(from_labels, from_relation)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.01, 100.0),
    views=st.integers(1, 3),
)
def test_invariant_to_batch_order_scale_and_relabelling(seed, scale, views):
    z, labels, temps, weights = random_case(seed, views=views, batch=9)
    loss_fn = MultiLevelSupConLoss(temps, weights)
    value = loss_fn(z, labels)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(loss_fn(z[:, perm], labels[perm]), value)
    torch.testing.assert_close(loss_fn(z * scale, labels), value)
    relabel = torch.tensor([7, 2, 0])  # a bijection of class ids, -1 stays -1
    renamed = torch.where(labels >= 0, relabel[labels.clamp_min(0)], labels)
    torch.testing.assert_close(loss_fn(z, renamed), value)


def test_relations_builders():
    labels = torch.tensor([0, 1, 0, -1])
    expected = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(relations.same_class(labels), expected)
    two = relations.same_class(torch.stack([labels, torch.zeros(4, dtype=torch.long)], 1))
    assert two.shape == (2, 4, 4) and torch.equal(two[0], expected) and two[1].all()
    hot = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    any_overlap = relations.overlap(hot, "any")
    jaccard = relations.overlap(hot, "jaccard")
    for a in range(4):
        for b in range(4):
            sa, sb = set(hot[a].nonzero().flatten().tolist()), set(hot[b].nonzero().flatten().tolist())
            assert any_overlap[a, b].item() == bool(sa & sb)
            assert jaccard[a, b].item() == pytest.approx(len(sa & sb) / len(sa | sb) if sa | sb else 0.0)
    assert not relations.instance(3).any()
    assert relations.stack([expected, expected]).shape == (2, 4, 4)


@pytest.mark.parametrize(
    "make_call,message",
    [
        (lambda: MultiLevelSupConLoss([0.1, 0.1])(torch.randn(2, 4, 8), torch.zeros(4, 2, dtype=torch.long)), "shape"),
        (lambda: MultiLevelSupConLoss([0.1])(torch.randn(2, 4, 2, 8), torch.zeros(4, 2, dtype=torch.long)), "heads"),
        (lambda: MultiLevelSupConLoss([0.1, 0.1])(torch.randn(2, 4, 2, 8), torch.zeros(4, 3, dtype=torch.long)),
         r"\(4, 2\)"),
        (lambda: MultiLevelSupConLoss([0.1, 0.1])(torch.randn(2, 4, 2, 8), torch.zeros(3, 4, 4)), r"\(2, 4, 4\)"),
        (lambda: MultiLevelSupConLoss([0.1, -0.2]), "> 0"),
        (lambda: MultiLevelSupConLoss([0.1, 0.0]), "> 0"),
        (lambda: MultiLevelSupConLoss([0.1, 0.1], [1.0]), "expected 2 weights"),
        (lambda: MultiLevelSupConLoss([0.1, 0.1], [1.0, -1.0]), ">= 0"),
        (lambda: MultiLevelSupConLoss([0.1])(torch.randn(1, 4, 2, 8), torch.tensor([[0], [-2], [1], [1]])), ">= -1"),
        (lambda: MultiLevelSupConLoss([0.1])(torch.randn(1, 4, 2, 8), torch.full((1, 4, 4), 1.5)), r"\[0, 1\]"),
        (lambda: MultiLevelSupConLoss([0.1])(torch.randn(1, 4, 2, 8), torch.zeros(1, 4, 4),
                                             torch.ones(4, dtype=torch.bool)), "anchor_mask"),
        (lambda: MultiLevelSupConLoss([0.1])(torch.zeros(1, 4, 2, 8, dtype=torch.long),
                                             torch.zeros(4, 1, dtype=torch.long)), "floating"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(make_call, message):
    with pytest.raises(ValueError, match=message):
        make_call()


@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 0.002), (torch.float32, 0.02), (torch.float32, 0.5)])
def test_row_max_and_fixed_shift_paths_match_brute_force(dtype, temperature):
    # β = 1/τ above the dtype's fixed-shift limit takes the row-max logsumexp; below it, the constant shift.
    z, labels, _, _ = random_case(7, heads=2, batch=9, views=2, dims=6)
    z = z * 0.3  # keep some anchors far from all others so a naive shift would underflow
    temps, weights = [temperature, temperature], [1.0, 0.5]
    value, grad = grad_of(lambda x: MultiLevelSupConLoss(temps, weights, block_size=4)(x, labels), z.to(dtype))
    ref_value, ref_grad = grad_of(
        lambda x: reference_loss(x, dense_from_labels(labels), temps, weights, labelled=labels.t() >= 0)[0], z
    )
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(value.double(), ref_value, rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol * 10, atol=tol * ref_grad.abs().max().item())
