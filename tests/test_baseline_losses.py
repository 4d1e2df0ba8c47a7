"""HiMulCon, MulSupCon and batch-hard triplet against brute-force loops written from the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlcl.losses.himulcon import HiMulConLoss, default_level_penalty
from mlcl.losses.mulsupcon import MulSupConLoss
from mlcl.losses.multilevel import SupConLoss
from mlcl.losses.triplet import BatchHardTripletLoss

# ---------------------------------------------------------------- brute-force references (float64)


def log_prob(rows: torch.Tensor, i: int, j: int, tau: float) -> torch.Tensor:
    """log( exp(s_ij/τ) / Σ_{a≠i} exp(s_ia/τ) ) for unit rows."""
    others = torch.stack([rows[i] @ rows[a] / tau for a in range(len(rows)) if a != i])
    return rows[i] @ rows[j] / tau - torch.logsumexp(others, 0)


def supcon_from_positives(rows: torch.Tensor, positives_of, tau: float) -> torch.Tensor:
    """Mean over (anchor, positive set) terms −(1/|P|) Σ_p log_prob(i, p); 0 if there is none."""
    terms = []
    for i in range(len(rows)):
        for positives in positives_of(i):
            if positives:
                terms.append(-torch.stack([log_prob(rows, i, p, tau) for p in positives]).mean())
    return torch.stack(terms).mean() if terms else rows.sum() * 0


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z.double(), dim=-1).reshape(-1, z.shape[-1])


def reference_level_loss(z, level_labels, tau):
    """SupCon at one level: positives share the (known) label or are the anchor's own other views."""
    rows, views = unit_rows(z), z.shape[1]

    def positives_of(i):
        label = level_labels[i // views]
        if label < 0:
            return []
        same = [j for j in range(len(rows)) if j // views == i // views or level_labels[j // views] == label]
        return [[j for j in same if j != i]]

    return supcon_from_positives(rows, positives_of, tau)


def level_has_anchor(level_labels, views):
    """Some labelled sample has a positive: another view, or another sample with its label."""
    known = [label for label in level_labels.tolist() if label >= 0]
    return bool(known) and (views > 1 or len(set(known)) < len(known))


def reference_himulcon(z, labels, tau, mode, penalty):
    """Zhang et al. 2022 as in the official HMLC code: per-level losses, running max from the finest."""
    num_levels = labels.shape[1]
    losses = [reference_level_loss(z, labels[:, level], tau) for level in range(num_levels)]
    has_anchor = [level_has_anchor(labels[:, level], z.shape[1]) for level in range(num_levels)]
    total = 0
    for level in range(num_levels):
        term = losses[level]
        if mode in ("hce", "hmce"):
            finer = [losses[m] for m in range(level, num_levels) if has_anchor[m]]
            term = max(finer, key=lambda t: t.item()) if has_anchor[level] else term * 0
        if mode in ("hmc", "hmce"):
            term = penalty[level] * term
        total = total + term
    return total / num_levels


def reference_mulsupcon(z, multi_hot, tau):
    """Zhang & Wu 2024: one SupCon term per (anchor row, label of its sample); mean over all of them."""
    rows, views = unit_rows(z), z.shape[1]

    def positives_of(i):
        labels = multi_hot[i // views].nonzero().flatten().tolist()
        return [[j for j in range(len(rows)) if j != i and multi_hot[j // views, k] == 1] for k in labels]

    return supcon_from_positives(rows, positives_of, tau)


def reference_triplet(z, labels, margin, distance, soft):
    """Hermans et al. 2017, batch hard, looping over anchors and pairs."""
    views = z.shape[1]
    rows = F.normalize(z.double(), dim=-1).reshape(-1, z.shape[-1])
    row_labels = labels.repeat_interleave(views).tolist()

    def d(a, b):
        return 1 - rows[a] @ rows[b] if distance == "cosine" else (rows[a] - rows[b]).norm()

    losses = []
    for a in range(len(rows)):
        if row_labels[a] < 0:
            continue
        pos = [d(a, p) for p in range(len(rows)) if p != a and row_labels[p] == row_labels[a]]
        neg = [d(a, n) for n in range(len(rows)) if row_labels[n] != row_labels[a]]
        if pos and neg:
            gap = max(pos, key=lambda t: t.item()) - min(neg, key=lambda t: t.item())
            losses.append(F.softplus(gap) if soft else torch.clamp(gap + margin, min=0))
    return torch.stack(losses).mean() if losses else rows.sum() * 0


# ---------------------------------------------------------------- helpers


def value_and_grad(fn, z):
    z = z.detach().clone().requires_grad_(True)
    value = fn(z)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach(), grad


def assert_matches(ours, reference, z, rtol=1e-10):
    value, grad = value_and_grad(ours, z)
    ref_value, ref_grad = value_and_grad(reference, z)
    torch.testing.assert_close(value, ref_value, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=1e-12)


def case(seed, batch=6, views=2, dims=4, levels=2, classes=3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, views, dims, generator=gen, dtype=torch.float64)
    labels = torch.randint(-1, classes, (batch, levels), generator=gen)
    return z, labels


# ---------------------------------------------------------------- HiMulCon


@pytest.mark.parametrize("mode", ["hmc", "hce", "hmce"])
@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("seed", range(2))
def test_himulcon_matches_brute_force(mode, views, seed):
    z, labels = case(seed, views=views, levels=3)
    penalty = default_level_penalty(3)
    loss_fn = HiMulConLoss(temperature=0.3, mode=mode, block_size=4)
    assert_matches(lambda x: loss_fn(x, labels), lambda x: reference_himulcon(x, labels, 0.3, mode, penalty), z)


def test_default_level_penalty_follows_the_official_pow2_of_inverse_depth():
    # Official HMLC: pow_2(1/l) with l = 1 at the finest level -> here coarse -> fine.
    assert default_level_penalty(3) == pytest.approx([2 ** (1 / 3), 2 ** (1 / 2), 2.0])
    assert default_level_penalty(1) == [2.0]


def constrained_case():
    """Two coarse groups far apart; inside each, samples of *different* fine classes sit together and
    same-fine samples on opposite sides, so the fine loss exceeds the coarse one and the hierarchy
    constraint lifts the coarse level's term to it."""
    spots = torch.tensor([[1.0, 1, 0], [1, -1, 0], [-1, 0, 1], [-1, 0, -1]]).repeat_interleave(2, 0)
    noise = 0.05 * torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(0))
    z = (spots.unsqueeze(1) + noise).double()
    coarse = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    fine = torch.tensor([0, 1, 0, 1, 2, 3, 2, 3])
    return z, torch.stack([coarse, fine], 1)


def test_himulcon_modes_are_distinct_and_combine_the_level_losses():
    z, labels = constrained_case()  # the fine level's loss is the larger: the constraint binds
    values = {}
    for mode in ("hmc", "hce", "hmce"):
        loss_fn = HiMulConLoss(temperature=0.5, mode=mode, level_penalty=[0.5, 3.0])
        values[mode] = loss_fn(z, labels)
    coarse, fine = loss_fn.last_level_losses
    assert fine > coarse
    torch.testing.assert_close(values["hmc"], (0.5 * coarse + 3.0 * fine) / 2)
    torch.testing.assert_close(values["hce"], (fine + fine) / 2)
    torch.testing.assert_close(values["hmce"], (0.5 * fine + 3.0 * fine) / 2)
    assert len({round(v.item(), 9) for v in values.values()}) == 3


def test_hierarchy_constraint_is_active_in_a_constructed_case():
    z, labels = constrained_case()
    loss_fn = HiMulConLoss(temperature=0.2, mode="hce")
    value, grad = value_and_grad(lambda x: loss_fn(x, labels), z)
    coarse_loss, fine_loss = loss_fn.last_level_losses
    assert fine_loss > coarse_loss + 0.3  # the constraint binds ...
    torch.testing.assert_close(value, fine_loss)  # ... both terms are the fine loss: (L_f + L_f) / 2
    fine_only = SupConLoss(temperature=0.2)
    _, fine_grad = value_and_grad(lambda x: fine_only(x, labels[:, 1]), z)
    torch.testing.assert_close(grad, fine_grad)  # and the coarse level gets no gradient
    # Swapping the roles (coarse loss larger) leaves hce equal to the plain mean of the level losses.
    swapped = labels.flip(1)
    value = HiMulConLoss(temperature=0.2, mode="hce", level_penalty=None)(z, swapped)
    torch.testing.assert_close(value, (fine_loss + coarse_loss) / 2)
    plain = HiMulConLoss(temperature=0.2, mode="hmc", level_penalty=[1.0, 1.0])(z, labels)
    torch.testing.assert_close(plain, (coarse_loss + fine_loss) / 2)


def test_a_level_without_anchors_contributes_zero_and_the_max_passes_through():
    z, labels = case(4, batch=6, levels=3)
    labels[:, 1] = -1
    for mode in ("hmc", "hce", "hmce"):
        loss_fn = HiMulConLoss(temperature=0.4, mode=mode)
        value, grad = value_and_grad(lambda x: loss_fn(x, labels), z)  # noqa: B023 (called here)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        assert loss_fn.last_level_losses[1] == 0
        ref = reference_himulcon(z, labels, 0.4, mode, default_level_penalty(3))
        torch.testing.assert_close(value, ref)


def test_one_level_hmc_with_unit_penalty_is_supcon():
    z, labels = case(5, batch=8, levels=1)
    ours = HiMulConLoss(temperature=0.2, mode="hmc", level_penalty=[1.0])(z, labels)
    torch.testing.assert_close(ours, SupConLoss(temperature=0.2)(z, labels[:, 0]))


# ---------------------------------------------------------------- MulSupCon


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("block_size", [None, 2])
@pytest.mark.parametrize("seed", range(2))
def test_mulsupcon_matches_brute_force(views, block_size, seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(6, views, 4, generator=gen, dtype=torch.float64)
    multi_hot = (torch.rand(6, 4, generator=gen) < 0.4).long()
    multi_hot[0] = 0  # an unlabelled sample: no anchor, only a negative
    multi_hot[1, 3], multi_hot[2:, 3] = 1, 0  # label 3 on one sample: with one view it has no positive
    loss_fn = MulSupConLoss(temperature=0.3, block_size=block_size)
    assert_matches(lambda x: loss_fn(x, multi_hot), lambda x: reference_mulsupcon(x, multi_hot, 0.3), z)


def test_mulsupcon_with_one_label_per_sample_is_supcon():
    z, labels = case(6, batch=10, views=2, levels=1, classes=4)
    labels = labels[:, 0].clamp_min(0)
    one_hot = F.one_hot(labels, 4).bool()
    assert_matches(lambda x: MulSupConLoss(0.2)(x, one_hot), lambda x: SupConLoss(0.2)(x, labels), z)


def test_mulsupcon_weighs_every_anchor_label_pair_equally():
    # Label 0 has three anchors and label 1 two: the mean over (anchor, label) pairs is not the mean of
    # the two per-label SupCon losses.
    z, _ = case(7, batch=4, views=2)
    multi_hot = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0]])
    ours = MulSupConLoss(0.5)(z, multi_hot)
    torch.testing.assert_close(ours, reference_mulsupcon(z, multi_hot, 0.5))
    per_label = [SupConLoss(0.5)(z, torch.where(column == 1, 0, -1)) for column in multi_hot.t()]
    torch.testing.assert_close(ours, (3 * per_label[0] + 2 * per_label[1]) / 5)
    assert not torch.isclose(ours, sum(per_label) / 2)


def test_mulsupcon_gradcheck():
    z, _ = case(8, batch=4, views=2, dims=3)
    multi_hot = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
    assert torch.autograd.gradcheck(lambda x: MulSupConLoss(0.4, block_size=3)(x, multi_hot), (z.requires_grad_(True),))


# ---------------------------------------------------------------- triplet


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("views", [1, 2])
def test_triplet_matches_brute_force(distance, soft, views):
    gen = torch.Generator().manual_seed(views)
    z = torch.randn(7, views, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, -1, 2, 0])  # label 2 has a positive only with two views
    loss_fn = BatchHardTripletLoss(margin=0.3, distance=distance, soft=soft)
    assert_matches(lambda x: loss_fn(x, labels), lambda x: reference_triplet(x, labels, 0.3, distance, soft), z)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_matches_pytorch_metric_learning_batch_hard(distance, soft):
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning import distances, miners, reducers

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (24,), generator=gen)
    metric = distances.LpDistance() if distance == "euclidean" else distances.CosineSimilarity()
    margin = 0.0 if soft else 0.2  # PML's smooth loss is softplus(gap + margin): Hermans' soft margin at 0
    pml_loss = pml_losses.TripletMarginLoss(
        margin=margin, smooth_loss=soft, distance=metric, reducer=reducers.MeanReducer()  # default: AvgNonZero
    )
    miner = miners.BatchHardMiner(distance=metric)
    ours = BatchHardTripletLoss(margin=0.2, distance=distance, soft=soft)
    assert_matches(lambda x: ours(x, labels), lambda x: pml_loss(x, labels, miner(x, labels)), z, rtol=1e-8)


def test_triplet_unlabelled_are_negatives_only_and_degenerate_batches_give_zero():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05]])
    # The unlabelled row is the closest negative of both anchors: it alone makes the loss positive.
    with_unlabelled = BatchHardTripletLoss(margin=0.1)(z, torch.tensor([0, 0, -1]))
    without = BatchHardTripletLoss(margin=0.1)(z[:2], torch.tensor([0, 0]))
    assert with_unlabelled > 0 and without == 0
    for labels in (torch.tensor([0, 1, 2]), torch.tensor([-1, -1, -1]), torch.tensor([3, 3, 3])):
        value, grad = value_and_grad(lambda x: BatchHardTripletLoss()(x, labels), z)  # noqa: B023 (called here)
        assert value == 0 and torch.count_nonzero(grad) == 0
    equal = torch.ones(4, 2, 3)
    value, grad = value_and_grad(lambda x: BatchHardTripletLoss()(x, torch.tensor([0, 0, 1, 1])), equal)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_triplet_unnormalised_euclidean_uses_raw_distances():
    z = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    value = BatchHardTripletLoss(margin=0.5, normalize=False)(z, torch.tensor([0, 0, 1]))
    # anchor 0: d_ap = 3, d_an = 1 -> 2.5; anchor 1: d_ap = 3, d_an = √10 -> 0.5 − (√10 − 3)
    torch.testing.assert_close(value, torch.tensor((2.5 + 0.5 - (math.sqrt(10) - 3)) / 2))


# ---------------------------------------------------------------- all three: dtypes, NaN safety, errors

def two_levels(batch):  # (coarse, fine) = (i % 3 // 2, i % 3)
    fine = torch.arange(batch) % 3
    return torch.stack([fine // 2, fine], 1)


def two_labels(batch):  # multi-hot with labels i % 3 and i % 2
    index = torch.arange(batch)
    return F.one_hot(index % 3, 3) | F.one_hot(index % 2, 3)


LOSSES = {
    "himulcon": (lambda: HiMulConLoss(temperature=0.1), two_levels),
    "mulsupcon": (lambda: MulSupConLoss(0.1), two_labels),
    "triplet": (BatchHardTripletLoss, lambda batch: torch.arange(batch) % 3),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_float32_agrees_with_float64_and_half_is_upcast(name):
    make_loss, make_labels = LOSSES[name]
    z = torch.randn(32, 2, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    labels = make_labels(32)
    v64, g64 = value_and_grad(lambda x: make_loss()(x, labels), z)
    v32, g32 = value_and_grad(lambda x: make_loss()(x, labels), z.float())
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-5)
    for half in (torch.float16, torch.bfloat16):
        vh, gh = value_and_grad(lambda x: make_loss()(x, labels), z.to(half))
        assert vh.dtype == torch.float32 and gh.dtype == half and torch.isfinite(gh.float()).all()
        torch.testing.assert_close(vh.double(), v64, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(1, 1, 4), (1, 2, 4), (5, 1, 4), (6, 2, 4)])
def test_no_nan_for_degenerate_batches(name, shape):
    make_loss, make_labels = LOSSES[name]
    for z in (torch.randn(shape) * 50, torch.ones(shape)):
        value, grad = value_and_grad(lambda x: make_loss()(x, make_labels(shape[0])), z)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_no_anchor_at_all_gives_exactly_zero():
    z = torch.randn(4, 1, 3)
    for loss, labels in (
        (HiMulConLoss(), torch.arange(4).repeat(2, 1).t()),
        (HiMulConLoss(), torch.full((4, 2), -1)),
        (MulSupConLoss(), torch.zeros(4, 3, dtype=torch.long)),
        (MulSupConLoss(), torch.eye(4, dtype=torch.long)),
    ):
        value, grad = value_and_grad(lambda x: loss(x, labels), z)  # noqa: B023 (called here)
        assert value.item() == 0.0 and torch.count_nonzero(grad) == 0


Z = torch.randn(4, 2, 3)
LABELS_4x2 = torch.zeros(4, 2, dtype=torch.long)
ERRORS = [
    (lambda: HiMulConLoss()(Z[:, 0], LABELS_4x2), r"\(B, V, D\).*got shape \(4, 3\)"),
    (lambda: HiMulConLoss()(Z, torch.zeros(4, dtype=torch.long)), r"\(B, L\) with B = 4.*got \(4,\)"),
    (lambda: HiMulConLoss()(Z, torch.zeros(3, 2, dtype=torch.long)), r"B = 4.*got \(3, 2\)"),
    (lambda: HiMulConLoss()(Z, torch.zeros(4, 2)), "integer class ids.*torch.float32"),
    (lambda: HiMulConLoss()(Z, torch.full((4, 2), -2)), ">= -1.*-2"),
    (lambda: HiMulConLoss(level_penalty=[1.0])(Z, LABELS_4x2), r"expected 2 level_penalty.*\[1.0\]"),
    (lambda: HiMulConLoss(level_penalty=[1.0, -1.0]), "level_penalty must be finite and >= 0"),
    (lambda: HiMulConLoss(mode="max"), r"mode must be one of \('hmc', 'hce', 'hmce'\), got 'max'"),
    (lambda: HiMulConLoss(temperature=0.0), "temperature must be finite and > 0"),
    (lambda: HiMulConLoss()(Z.long(), LABELS_4x2), "z must be a floating-point tensor, got dtype torch.int64"),
    (lambda: MulSupConLoss()(Z, torch.zeros(4, 3) + 0.5), "only 0 and 1"),
    (lambda: MulSupConLoss()(Z, torch.zeros(5, 3)), r"\(B, C\) with B = 4, got \(5, 3\)"),
    (lambda: MulSupConLoss()(Z[:0], torch.zeros(0, 3)), r"z must not be empty, got shape \(0, 2, 3\)"),
    (lambda: MulSupConLoss(temperature=float("nan")), "temperature must be finite"),
    (lambda: MulSupConLoss(block_size=0), "block_size must be >= 1"),
    (lambda: BatchHardTripletLoss()(Z, torch.zeros(8, dtype=torch.long)), r"\(B,\) = \(4,\).*got \(8,\)"),
    (lambda: BatchHardTripletLoss()(Z, torch.zeros(4)), "integer class ids.*torch.float32"),
    (lambda: BatchHardTripletLoss()(Z, torch.full((4,), -3)), ">= -1.*-3"),
    (lambda: BatchHardTripletLoss()(Z[None], LABELS_4x2[:, 0]), r"\(B, V, D\).*got shape \(1, 4, 2, 3\)"),
    (lambda: BatchHardTripletLoss(distance="manhattan"), r"distance must be one of \('euclidean', 'cosine'\)"),
    (lambda: BatchHardTripletLoss(margin=-0.1), "margin must be a finite number >= 0, got -0.1"),
]


@pytest.mark.parametrize("call,message", ERRORS)
def test_errors_name_expected_and_actual(call, message):
    with pytest.raises(ValueError, match=message):
        call()
