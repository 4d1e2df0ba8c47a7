"""DDP contract: W gloo ranks × b samples give the one-process gradients of W·b samples.

Real processes (``torch.multiprocessing``, gloo on 127.0.0.1), world sizes 2 and 3. Every rank builds
the same small float64 model (Linear encoder + one Linear projection per head, the loss inside the
module so learnable temperatures are synchronised by DDP too), wraps it in DistributedDataParallel,
takes its rows ``r*b:(r+1)*b`` of one fixed global batch, computes the loss with
``gather_distributed=True`` and backpropagates. The parent computes the same loss on the whole batch
in one process without DDP and compares every parameter gradient (relative error < 1e-9) and the
rank-average of the loss values.

One spawn per world size runs all the cases (each spawn costs a torch import per rank).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mlcl import MultiLevelSupConLoss, NTXentLoss, SupConLoss, distributed
from mlcl.losses import BatchHardTripletLoss, HiMulConLoss, MulSupConLoss
from mlcl.train.runtime import join_local_group

PER_RANK = 4  # b: samples per rank
FEATURES, HIDDEN, DIMS = 6, 8, 5
REL_TOL = 1e-9
SPAWN_TIMEOUT_S = 120


class Net(nn.Module):
    """Linear encoder + one Linear projection per head; ``forward`` returns the loss."""

    def __init__(self, num_heads: int, loss: nn.Module):
        super().__init__()
        self.encoder = nn.Linear(FEATURES, HIDDEN)
        self.heads = nn.ModuleList(nn.Linear(HIDDEN, DIMS) for _ in range(num_heads))
        self.loss = loss

    def forward(self, x, relation=None, anchor_mask=None):
        hidden = torch.tanh(self.encoder(x))  # (b, V, HIDDEN)
        z = torch.stack([head(hidden) for head in self.heads])  # (H, b, V, D)
        if isinstance(self.loss, NTXentLoss):
            return self.loss(z[0])
        if isinstance(self.loss, SupConLoss):
            return self.loss(z[0], relation, anchor_mask)
        if isinstance(self.loss, (HiMulConLoss, MulSupConLoss, BatchHardTripletLoss)):  # one shared head
            return self.loss(z[0], relation)
        return self.loss(z, relation, anchor_mask)


@dataclasses.dataclass
class Case:
    """One loss on one global batch. ``*_dim``: the sample axis a rank slices (None: not sliced)."""

    name: str
    num_heads: int
    make_loss: Callable[[bool], nn.Module]  # gather_distributed -> loss module
    x: torch.Tensor  # (N, V, FEATURES)
    relation: torch.Tensor | None = None
    relation_dim: int | None = None
    mask: torch.Tensor | None = None
    mask_dim: int | None = None

    def build(self, gather: bool) -> Net:
        torch.manual_seed(0)
        return Net(self.num_heads, self.make_loss(gather)).double()

    def local_inputs(self, rank: int, per_rank: int) -> tuple:
        def rows(t, dim):
            return None if t is None else t.narrow(dim, rank * per_rank, per_rank)

        return rows(self.x, 0), rows(self.relation, self.relation_dim), rows(self.mask, self.mask_dim)

    def global_inputs(self) -> tuple:
        return self.x, self.relation, self.mask


def mlcl_labels(world: int, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) labels and an (3, N) anchor mask with the cross-rank edge cases placed in them."""
    n = world * b
    last = (world - 1) * b  # first sample of the last rank
    labels = torch.randint(0, 3, (n, 3), generator=gen)
    # Head 0: sample 0's only label-positive is sample b (rank 1); sample 1's is sample N-1 (last rank).
    labels[0, 0] = labels[b, 0] = 10
    labels[1, 0] = labels[n - 1, 0] = 11
    labels[2, 1] = labels[b + 1, 0] = -1  # unknown labels: no anchor, nobody's positive
    # Head 2: the last rank has no valid anchor at all (unlabelled or masked), yet its one labelled
    # sample is the only positive of rank 0's sample 3.
    labels[last:, 2] = -1
    labels[last, 2] = labels[3, 2] = 12
    mask = torch.rand(3, n, generator=gen) > 0.2
    mask[2, last:] = False
    mask[:, 3] = True
    mask[0, :2] = True
    return labels, mask


def make_cases(world: int, b: int = PER_RANK) -> list[Case]:
    n = world * b
    gen = torch.Generator().manual_seed(1000 + world)

    def inputs(views: int) -> torch.Tensor:
        return torch.randn(n, views, FEATURES, generator=gen, dtype=torch.float64)

    cases = []
    labels, mask = mlcl_labels(world, b, gen)
    cases.append(
        Case(
            "mlcl_labels",
            3,
            lambda g: MultiLevelSupConLoss([0.5, 0.2, 0.1], [0.5, 1.0, 2.0], g, learnable_temperatures=True),
            inputs(2),
            labels,
            0,
            mask,
            1,
        )
    )
    labels1, mask1 = mlcl_labels(world, b, gen)
    cases.append(
        Case(
            "mlcl_labels_1view_blocked",
            3,
            lambda g: MultiLevelSupConLoss([0.3, 0.3, 0.07], [1.0, 0.25, 1.0], g, block_size=1),
            inputs(1),
            labels1,
            0,
            mask1,
            1,
        )
    )
    # Dense (H, N, N) positive weights: with gather each rank passes rows r*b:(r+1)*b, all N columns.
    dense = torch.rand(3, n, n, generator=gen, dtype=torch.float64)
    dense *= torch.rand(3, n, n, generator=gen) > 0.5
    dense[0, 0] = 0
    dense[0, 0, b] = 0.7  # sample 0's only (non-view) positive lives on rank 1
    dense[1, (world - 1) * b :] = 0  # last rank: no label-positives at head 1 ...
    dense_mask = torch.rand(3, n, generator=gen) > 0.2
    dense_mask[2, (world - 1) * b :] = False  # ... and no anchors at all at head 2
    cases.append(
        Case(
            "mlcl_dense",
            3,
            lambda g: MultiLevelSupConLoss([0.4, 0.2, 0.1], [1.0, 0.5, 1.5], g, block_size=3),
            inputs(2),
            dense,
            1,
            dense_mask,
            1,
        )
    )
    # SupCon, one view: a sample without any positive is no anchor.
    sup = torch.randint(0, 3, (n,), generator=gen)
    sup[0] = sup[n - 1] = 20  # only positive on the last rank
    sup[b] = 21  # no positive at all
    sup[1] = sup[b + 2] = -1
    sup_mask = torch.ones(n, dtype=torch.bool)
    sup_mask[2] = False
    cases.append(Case("supcon", 1, lambda g: SupConLoss(0.2, g), inputs(1), sup, 0, sup_mask, 0))
    # SupCon with a bool (N, N) relation: each rank passes its (b, N) rows.
    sup_dense = torch.rand(n, n, generator=gen) > 0.6
    sup_dense[0] = False
    sup_dense[0, n - 1] = True
    cases.append(Case("supcon_dense", 1, lambda g: SupConLoss(0.15, g), inputs(2), sup_dense, 0))
    cases.append(Case("simclr", 1, lambda g: NTXentLoss(0.5, g), inputs(2)))
    # HiMulCon: which level wins the hierarchy max must follow the global per-level losses.
    levels, _ = mlcl_labels(world, b, gen)
    for mode in ("hmce", "hce"):
        cases.append(Case(f"himulcon_{mode}", 1, lambda g, m=mode: HiMulConLoss(0.2, m, gather_distributed=g),
                          inputs(2), levels, 0))
    # MulSupCon: label counts (the degrees) are global; label 4 has one member, on the last rank.
    hot = torch.rand(n, 5, generator=gen) > 0.6
    hot[:, 4] = False
    hot[n - 1, 4] = True
    hot[0] = False  # no label: never an anchor
    cases.append(Case("mulsupcon", 1, lambda g: MulSupConLoss(0.15, gather_distributed=g), inputs(2), hot, 0))
    # Triplet: sample 0's only positive besides its own view is on the last rank; sample 1 is unlabelled.
    triplet = torch.randint(0, 3, (n,), generator=gen)
    triplet[0] = triplet[n - 1] = 30
    triplet[1] = -1
    cases.append(Case("triplet", 1, lambda g: BatchHardTripletLoss(0.3, gather_distributed=g), inputs(2), triplet, 0))
    cases.append(Case("triplet_soft_cosine_1view", 1,
                      lambda g: BatchHardTripletLoss(distance="cosine", soft=True, gather_distributed=g),
                      inputs(1), triplet, 0))
    return cases


def logged_losses(loss: nn.Module) -> torch.Tensor:
    """The per-head (MLCL, SupCon) or per-level (HiMulCon) losses a loss keeps for logging; else empty."""
    for name in ("last_head_losses", "last_level_losses"):
        if getattr(loss, name, None) is not None:
            return getattr(loss, name)
    return torch.zeros(0, dtype=torch.float64)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unequal_batch_errors(rank: int, world: int) -> dict[str, str]:
    """Rank r holds b + r samples: every rank must raise the batch-size ValueError (no hang)."""
    b = PER_RANK - 1 + rank
    gen = torch.Generator().manual_seed(rank)
    messages = {}
    loss_fn = MultiLevelSupConLoss([0.5, 0.1], gather_distributed=True)
    z = torch.randn(2, b, 2, DIMS, generator=gen, dtype=torch.float64, requires_grad=True)
    total = sum(PER_RANK - 1 + r for r in range(world))
    relations = {
        "labels": torch.randint(0, 3, (b, 2), generator=gen),
        # (H, b_r, ΣB): with world 3 the middle rank's shape passes the local (H, b, W·b) check.
        "dense": torch.rand(2, b, total, generator=gen, dtype=torch.float64),
    }
    for form, relation in relations.items():
        try:
            loss_fn(z, relation)
            messages[form] = "no error"
        except ValueError as err:
            messages[form] = str(err)
    return messages


def local_relation_error() -> str:
    """A dense relation of the one-process shape (H, b, b) where gather needs (H, b, W·b)."""
    z = torch.randn(2, PER_RANK, 2, DIMS, dtype=torch.float64)
    try:
        MultiLevelSupConLoss([0.5, 0.1], gather_distributed=True)(z, torch.zeros(2, PER_RANK, PER_RANK))
    except ValueError as err:
        return str(err)
    return "no error"


def gather_shared_gradient(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Two gathers whose outputs are added: autograd hands both backwards the same gradient tensor."""
    x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    y = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    c = torch.arange(2 * world * 3, dtype=torch.float64).view(2 * world, 3)  # the same on every rank
    (c * (distributed.gather_with_grad(x) + distributed.gather_with_grad(y))).sum().backward()
    # d/dx of Σ_r loss_r is W·c[rows of this rank] for x and for y.
    return {"x": x.grad, "y": y.grad, "expected": world * c[2 * rank : 2 * rank + 2]}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    join_local_group(rank, world, port, timeout_s=60)
    try:
        results = {}
        for case in make_cases(world):
            net = case.build(gather=True)
            model = nn.parallel.DistributedDataParallel(net)
            loss = model(*case.local_inputs(rank, PER_RANK))
            loss.backward()
            results[case.name] = {
                "loss": loss.detach(),
                "head_losses": logged_losses(net.loss),
                "grads": {name: p.grad.detach().clone() for name, p in net.named_parameters()},
            }
        results["unequal_batch"] = unequal_batch_errors(rank, world)
        results["shared_gradient"] = gather_shared_gradient(rank, world)
        results["local_relation"] = local_relation_error()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, out_dir: Path) -> list[dict]:
    port = free_port()
    context = mp.start_processes(
        worker, args=(world, port, str(out_dir)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} gloo ranks did not finish in {SPAWN_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def single_process(case: Case) -> dict:
    net = case.build(gather=False)
    loss = net(*case.global_inputs())
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in net.named_parameters()}
    return {"loss": loss.detach(), "head_losses": logged_losses(net.loss), "grads": grads}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def ddp_run(request, tmp_path_factory):
    world = request.param
    start = time.perf_counter()
    ranks = run_ranks(world, tmp_path_factory.mktemp(f"ddp_world{world}"))
    print(f"{world} gloo ranks: {time.perf_counter() - start:.1f} s")
    return world, ranks


def ranks_and_reference(ddp_run, name: str):
    """``(world, every rank's results, the one-process reference)`` of the case called ``name``."""
    world, ranks = ddp_run
    case = next(c for c in make_cases(world) if c.name == name)
    return world, ranks, single_process(case)


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in make_cases(2)])
def test_ddp_gradients_equal_one_process(ddp_run, name):
    world, ranks, expected = ranks_and_reference(ddp_run, name)
    assert set(expected["grads"]) == set(ranks[0][name]["grads"])
    for rank, result in enumerate(ranks):
        for param, grad in result[name]["grads"].items():
            ref = expected["grads"][param]
            assert ref.abs().max() > 0, f"{param}: the reference gradient is zero, the case tests nothing"
            error = relative_error(grad, ref)
            assert error < REL_TOL, f"rank {rank}/{world}, {name}, {param}: relative error {error:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in make_cases(2)])
def test_rank_average_of_loss_equals_one_process_loss(ddp_run, name):
    _, ranks, expected = ranks_and_reference(ddp_run, name)
    mean_loss = torch.stack([r[name]["loss"] for r in ranks]).mean()
    mean_heads = torch.stack([r[name]["head_losses"] for r in ranks]).mean(0)
    torch.testing.assert_close(mean_loss, expected["loss"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean_heads, expected["head_losses"], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_a_rank_with_no_anchor_at_a_head_still_gets_key_gradients(ddp_run):
    """The last rank has no valid anchor at head 2 (loss term 0) but its rows are keys for others."""
    world, ranks = ddp_run
    last = ranks[-1]["mlcl_labels"]
    assert last["head_losses"][2] == 0
    assert ranks[0]["mlcl_labels"]["head_losses"][2] != 0
    assert last["grads"]["heads.2.weight"].abs().max() > 0


@pytest.mark.slow
def test_unequal_batch_sizes_raise_a_clear_error_on_every_rank(ddp_run):
    world, ranks = ddp_run
    sizes = [PER_RANK - 1 + r for r in range(world)]
    for rank, result in enumerate(ranks):
        for form, message in result["unequal_batch"].items():
            assert "same batch size on every rank" in message, f"rank {rank}, {form}: {message}"
            assert str(sizes) in message


@pytest.mark.slow
def test_dense_relation_without_the_other_ranks_columns_raises(ddp_run):
    world, ranks = ddp_run
    for result in ranks:
        assert f"(2, {PER_RANK}, {world * PER_RANK})" in result["local_relation"], result["local_relation"]


@pytest.mark.parametrize("name", [c.name for c in make_cases(2)])
def test_gather_without_process_group_is_single_process(name):
    assert not (dist.is_available() and dist.is_initialized())
    case = next(c for c in make_cases(2) if c.name == name)
    plain = single_process(case)
    net = case.build(gather=True)
    loss = net(*case.global_inputs())
    loss.backward()
    assert torch.equal(loss.detach(), plain["loss"])
    for param, p in net.named_parameters():
        assert torch.equal(p.grad, plain["grads"][param]), param



@pytest.mark.slow
def test_gather_backward_does_not_reduce_a_shared_gradient_twice(ddp_run):
    world, ranks = ddp_run
    for result in ranks:
        grads = result["shared_gradient"]
        torch.testing.assert_close(grads["x"], grads["expected"], rtol=0, atol=0)
        torch.testing.assert_close(grads["y"], grads["expected"], rtol=0, atol=0)
