"""Partial labels: labels hidden per level (data.level_fractions), empty label cells in a user's table,
method.level, and how losses, probes and kNN treat rows unknown at a level."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import QUICKSTART, train_args
from loss_reference import dense_from_labels, reference_loss

from mlcl.cli import main
from mlcl.data.protocols import keep_level_labels, labelled_rows, share
from mlcl.data.tabular import load_table
from mlcl.data.types import Dataset, LabeledSplit
from mlcl.errors import ConfigError, DataError
from mlcl.eval.probe import knn_predict, linear_probe
from mlcl.hierarchy import Hierarchy
from mlcl.train.config import DataConfig, NoiseConfig, load_config
from mlcl.train.data_setup import _apply_protocols
from mlcl.train.evaluation import monitor_score
from mlcl.train.methods import Objective

# 3 coarse classes with 2, 3 and 4 fine classes; fine classes of unequal sizes
PARENTS = {f"f{p}{c}": f"c{p}" for p, children in enumerate((2, 3, 4)) for c in range(children)}
HIERARCHY = Hierarchy.from_parents(PARENTS)


def split(seed: int = 0, sizes: tuple[int, int] = (7, 40)) -> LabeledSplit:
    """Rows of every fine class (a random size in ``sizes``), with their coarse labels from the hierarchy."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(*sizes, (HIERARCHY.num_classes("fine"),), generator=generator)
    fine = torch.repeat_interleave(torch.arange(len(counts)), counts)
    fine = fine[torch.randperm(len(fine), generator=generator)]
    levels = HIERARCHY.leaf_to_levels(fine)
    targets = {"coarse": levels[:, 0].clone(), "fine": levels[:, 1].clone()}
    return LabeledSplit(torch.randn(len(fine), 5, generator=generator), targets, [str(i) for i in range(len(fine))])


def dataset(seed: int = 0) -> Dataset:
    return Dataset("toy", "features", HIERARCHY.label_levels(), split(seed), split(seed + 1), split(seed + 2),
                   hierarchy=HIERARCHY)


# ------------------------------------------------------------------------------------ the protocol


@pytest.mark.parametrize("fractions", [{"fine": 0.2}, {"fine": 0.1, "coarse": 0.5}, {"fine": 0.35, "coarse": 0.35},
                                       {"fine": 1.0, "coarse": 1.0}])
def test_every_class_keeps_its_share_and_fine_labels_come_with_coarse_ones(fractions):
    original = split()
    hidden = keep_level_labels(original, HIERARCHY, fractions, seed=3)
    assert torch.equal(hidden.inputs, original.inputs) and hidden.ids == original.ids  # every row is kept
    fine, coarse = hidden.targets["fine"], hidden.targets["coarse"]
    for name in ("coarse", "fine"):  # a kept label is the original one
        kept = hidden.targets[name] >= 0
        assert torch.equal(hidden.targets[name][kept], original.targets[name][kept])
    assert not ((fine >= 0) & (coarse < 0)).any()  # nested
    for c in range(HIERARCHY.num_classes("fine")):
        n = int((original.targets["fine"] == c).sum())
        expected = max(1, share(fractions["fine"], n)) if "fine" in fractions else n
        assert int((fine == c).sum()) == expected
    for p in range(HIERARCHY.num_classes("coarse")):
        n = int((original.targets["coarse"] == p).sum())
        wanted = max(1, share(fractions["coarse"], n)) if "coarse" in fractions else n
        under = int(((coarse == p) & (fine >= 0)).sum())  # rows that keep a fine label must keep this one
        assert int((coarse == p).sum()) == max(wanted, under)
    assert labelled_rows(hidden) == {"coarse": int((coarse >= 0).sum()), "fine": int((fine >= 0).sum())}


def test_coarse_top_up_is_exact_when_its_share_is_larger():
    original = split(sizes=(20, 21))  # 20 rows per fine class: shares are exact
    hidden = keep_level_labels(original, HIERARCHY, {"fine": 0.1, "coarse": 0.5}, seed=0)
    assert labelled_rows(hidden) == {"coarse": len(original) // 2, "fine": len(original) // 10}


def test_seeded_and_reproducible():
    original = split()
    a = keep_level_labels(original, HIERARCHY.label_levels(), {"fine": 0.3, "coarse": 0.6}, seed=5)
    b = keep_level_labels(original, HIERARCHY, {"fine": 0.3, "coarse": 0.6}, seed=5)
    c = keep_level_labels(original, HIERARCHY, {"fine": 0.3, "coarse": 0.6}, seed=6)
    assert all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)
    assert not torch.equal(a.targets["fine"], c.targets["fine"])
    state = torch.get_rng_state()
    keep_level_labels(original, HIERARCHY, {"fine": 0.3}, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


@pytest.mark.parametrize("fractions, message", [
    ({"fin": 0.5}, r"no level 'fin' \(did you mean 'fine'\?\)"),
    ({"fine": 0.5, "coarse": 0.2}, "'fine' keeps 0.5 of its labels but 'coarse' above it only 0.2"),
    ({"coarse": 0.5}, "'fine' is not named, so it keeps all of its labels but 'coarse' above it only 0.5; .* "
                      "give 'fine' at most 0.5"),
    ({"fine": 0.0}, r"must be in \(0, 1\]"),
    ({"fine": 1.5}, r"must be in \(0, 1\]"),
])
def test_bad_fractions_are_refused(fractions, message):
    with pytest.raises(DataError, match=message):
        keep_level_labels(split(), HIERARCHY, fractions, seed=0)


def test_multi_label_levels_are_refused():
    from mlcl.hierarchy import LabelLevel
    tags = LabeledSplit(torch.zeros(4, 2), {"tags": torch.eye(4)[:, :3]})
    with pytest.raises(DataError, match="'tags' is multi-label"):
        keep_level_labels(tags, [LabelLevel("tags", ["a", "b", "c"], True)], {"tags": 0.5}, seed=0)


# ------------------------------------------------------------------------- the run's data protocols


def test_only_the_training_split_loses_labels():
    before, after = dataset(), _apply_protocols(dataset(), DataConfig(level_fractions={"fine": 0.1}), seed=0)
    for name in ("val", "test"):
        assert all(torch.equal(getattr(before, name).targets[k], getattr(after, name).targets[k]) for k in ("coarse",
                                                                                                         "fine"))
    assert len(after.train) == len(before.train)
    assert labelled_rows(after.train)["coarse"] == len(before.train)
    assert labelled_rows(after.train)["fine"] < len(before.train) // 5


def test_composes_with_fraction_and_noise():
    config = DataConfig(fraction=0.5, level_fractions={"fine": 0.2, "coarse": 0.6},
                        noise=NoiseConfig(rate=0.25, mode="hierarchical"))
    reduced = _apply_protocols(dataset(), DataConfig(fraction=0.5), seed=1).train
    hidden = _apply_protocols(dataset(), DataConfig(fraction=0.5, level_fractions=config.level_fractions),
                              seed=1).train
    noisy = _apply_protocols(dataset(), config, seed=1).train
    assert len(noisy) == len(hidden) == len(reduced)  # data.fraction drops rows first; then labels are hidden
    fine_counts = [int((reduced.targets["fine"] == c).sum()) for c in range(HIERARCHY.num_classes("fine"))]
    assert labelled_rows(hidden)["fine"] == sum(max(1, share(0.2, n)) for n in fine_counts)
    # noise flips only kept fine labels, about 25% of them, and their coarse labels follow
    assert torch.equal(noisy.targets["fine"] >= 0, hidden.targets["fine"] >= 0)
    flipped = noisy.targets["fine"] != hidden.targets["fine"]
    assert int(flipped.sum()) == share(0.25, labelled_rows(hidden)["fine"])
    labelled = noisy.targets["fine"] >= 0
    expected = HIERARCHY.leaf_to_levels(noisy.targets["fine"][labelled])[:, 0]
    assert torch.equal(noisy.targets["coarse"][labelled], expected)


def test_unknown_level_and_growing_fractions_are_config_errors():
    with pytest.raises(ConfigError, match=r"data.level_fractions names 'fin', .*\(did you mean 'fine'\?\)"):
        _apply_protocols(dataset(), DataConfig(level_fractions={"fin": 0.1}), seed=0)
    with pytest.raises(ConfigError, match="data.level_fractions: level 'fine' keeps 0.9 of its labels"):
        _apply_protocols(dataset(), DataConfig(level_fractions={"fine": 0.9, "coarse": 0.5}), seed=0)
    with pytest.raises(ConfigError, match=r"data.level_fractions.fine must be in \(0, 1\]"):
        load_config(QUICKSTART, ["data.level_fractions={fine: 0}"])


# ----------------------------------------------------------------------------------- method.level


def test_method_level_picks_supcon_positives_and_is_refused_elsewhere():
    toy = dataset()
    assert Objective(load_config(QUICKSTART, ["method.name=supcon"]).method, toy).heads[0].level.name == "fine"
    config = load_config(QUICKSTART, ["method.name=supcon", "method.level=coarse"])
    assert Objective(config.method, toy).heads[0].level.name == "coarse"
    triplet = load_config(QUICKSTART, ["method.name=triplet", "method.level=coarse"])
    assert Objective(triplet.method, toy).heads[0].level.name == "coarse"
    typo = load_config(QUICKSTART, ["method.name=supcon", "method.level=corse"])
    with pytest.raises(ConfigError, match=r"method.level='corse' is not a level of toy \(did you mean 'coarse'\?\)"):
        Objective(typo.method, toy)
    for name in ("mlcl", "himulcon", "ce", "simclr", "mulsupcon"):
        with pytest.raises(ConfigError, match="method.level applies to supcon and triplet only"):
            load_config(QUICKSTART, [f"method.name={name}", "method.level=coarse", "method.views=2"])


def test_supcon_on_a_partly_unknown_level_matches_the_brute_force_loss():
    """Rows unknown at the level are no anchor and nobody's positive, but stay in every denominator."""
    toy = dataset()
    objective = Objective(load_config(QUICKSTART, ["method.name=supcon", "method.level=coarse",
                                                   "method.temperatures=[0.2]"]).method, toy)
    generator = torch.Generator().manual_seed(0)
    batch, views = 10, 2
    coarse = torch.tensor([0, 1, -1, 0, 2, -1, 1, 0, -1, 2])
    targets = {"coarse": coarse, "fine": torch.full((batch,), -1)}
    z = torch.randn(1, batch, views, 6, generator=generator, dtype=torch.float64)
    value, _ = objective(z, {}, targets, views)
    labels = coarse.unsqueeze(1)
    expected, _ = reference_loss(z, dense_from_labels(labels), [0.2], [1.0], labelled=(labels >= 0).t())
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    # an unknown row is a negative: moving it changes the loss of the labelled anchors
    moved = z.clone()
    moved[0, 2] = z[0, 0]
    assert not math.isclose(float(objective(moved, {}, targets, views)[0]), float(value), rel_tol=1e-6)


def test_ce_masks_each_level_on_its_own():
    toy = dataset()
    objective = Objective(load_config(QUICKSTART, ["method.name=ce", "method.views=1"]).method, toy)
    generator = torch.Generator().manual_seed(1)
    targets = {"coarse": torch.tensor([0, 1, 2, -1, 0]), "fine": torch.tensor([0, -1, -1, -1, 1])}
    logits = {name: torch.randn(5, HIERARCHY.num_classes(name), generator=generator) for name in targets}
    value, logs = objective(None, logits, targets, 1)
    for name, target in targets.items():
        known = target >= 0
        torch.testing.assert_close(logs[f"ce_{name}"], F.cross_entropy(logits[name][known], target[known]))
    torch.testing.assert_close(value, logs["ce_coarse"] + logs["ce_fine"])


def test_probe_and_knn_use_only_the_labelled_rows():
    generator = torch.Generator().manual_seed(2)
    x, test_x = torch.randn(200, 6, generator=generator), torch.randn(50, 6, generator=generator)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    partial = y.clone()
    partial[torch.randperm(200, generator=generator)[:180]] = -1  # 90% of the fine labels unknown
    known = partial >= 0
    mixed = linear_probe(x, partial, test_x, num_classes=4, epochs=50)
    alone = linear_probe(x[known], y[known], test_x, num_classes=4, epochs=50)
    torch.testing.assert_close(mixed.scores, alone.scores)
    assert torch.equal(knn_predict(x, partial, test_x, k=5), knn_predict(x[known], y[known], test_x, k=5))


# ------------------------------------------------------------------------------ empty table cells


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_fine_cells_are_unknown_and_empty_coarse_cells_are_inferred(tmp_path):
    text = "text,coarse,fine\na,top,shirt\nb,top,\nc,,shirt\nd,shoe,boot\ne,shoe,  \nf,top,tee\n"
    split, levels, hierarchy = load_table(write(tmp_path / "d.csv", text), input="text", levels=["coarse", "fine"])
    assert hierarchy.classes == {"coarse": ["shoe", "top"], "fine": ["boot", "shirt", "tee"]}
    assert split.targets["coarse"].tolist() == [1, 1, 1, 0, 0, 1]
    assert split.targets["fine"].tolist() == [1, -1, 1, 0, -1, 2]
    assert labelled_rows(split) == {"coarse": 6, "fine": 4}


def test_jsonl_missing_key_and_null_are_unknown(tmp_path):
    rows = [{"x": [1, 2], "coarse": "top", "fine": "shirt"}, {"x": [3, 4], "coarse": "top"},
            {"x": [5, 6], "coarse": "shoe", "fine": None}, {"x": [7, 8], "coarse": "shoe", "fine": "boot"}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    split, _, _ = load_table(path, input="x", levels=["coarse", "fine"])
    assert split.targets["fine"].tolist() == [1, -1, -1, 0]
    assert split.targets["coarse"].tolist() == [1, 1, 0, 0]


def test_given_hierarchy_fills_in_and_checks_coarse_cells(tmp_path):
    hierarchy = Hierarchy.from_parents({"shirt": "top", "tee": "top", "boot": "shoe"})
    text = "text,coarse,fine\na,,tee\nb,shoe,\nc,top,shirt\n"
    split, _, _ = load_table(write(tmp_path / "d.csv", text), input="text", levels=["coarse", "fine"],
                             hierarchy=hierarchy)
    assert split.targets["coarse"].tolist() == [1, 0, 1] and split.targets["fine"].tolist() == [2, -1, 1]
    bad = write(tmp_path / "bad.csv", "text,coarse,fine\na,shoe,tee\n")
    with pytest.raises(DataError, match=r"bad.csv, line 2, column 'coarse': 'shoe', but the hierarchy puts 'tee' "
                                        r"under 'top'"):
        load_table(bad, input="text", levels=["coarse", "fine"], hierarchy=hierarchy)


@pytest.mark.parametrize("text, message", [
    ("text,coarse,fine\na,top,shirt\nb,,tee\n", r"line 3, column 'fine': no row labels 'tee' at every level"),
    ("text,coarse,fine\na,top,shirt\nb,bag,\n", r"line 3, column 'coarse': no row labels 'bag' at every level"),
    ("text,coarse,fine\na,top,\nb,shoe,\n", r"no row is labelled at every level \(coarse, fine\)"),
    ("text,coarse,fine\na,top,shirt\nb,,\n", r"line 3, column 'coarse': empty label at every level"),
    ("text,coarse,fine\na,top,shirt\nb,shoe,shirt\n", "class 'shirt' .* has two parents"),
])
def test_rows_the_hierarchy_cannot_place_are_named(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_table(write(tmp_path / "d.csv", text), input="text", levels=["coarse", "fine"])


# --------------------------------------------------------------------------------------- a run


def feature_table(path, rows: int = 30):
    """4 fine classes under 2 coarse ones; the fine label of every third row is missing."""
    generator = np.random.default_rng(0)
    lines = ["x0,x1,x2,x3,coarse,fine"]
    for i, fine in enumerate(("a1", "a2", "b1", "b2")):
        for r in range(rows):
            values = ",".join(f"{v:.4f}" for v in generator.normal(i, 1.0, 4))
            lines.append(f"{values},{fine[0]},{fine if r % 3 else ''}")
    return write(path, "\n".join(lines) + "\n")


def _partial_table_run(tmp_path, out, *extra: str) -> list[str]:
    """``mlcl train`` arguments (progress lines on) for a quick run on a feature table, 30% fine labels."""
    data = feature_table(tmp_path / "d.csv")
    overrides = ["data.name=table", f"data.path={data}", "data.options={input: [x0, x1, x2, x3], levels: [coarse, "
                 "fine]}", "data.level_fractions={fine: 0.3}", "model.encoder=mlp", "model.encoder_options={}",
                 "model.proj_hidden=16", "model.proj_dim=8", "train.batch_size=16", "train.epochs=1",
                 "eval.embedding_map=none", "eval.knn_k=3", "eval.probe_epochs=10", "train.threads=1", *extra]
    return [a for a in train_args(out, *overrides) if a != "--quiet"]


@pytest.mark.parametrize("method", [["method.name=mlcl", "method.heads=[]", "method.temperatures=[0.1]",
                                     "method.weights=[]"],
                                    ["method.name=supcon", "method.level=coarse"]], ids=["mlcl", "supcon-coarse"])
def test_a_run_on_partial_labels_reports_its_labelled_rows(tmp_path, capsys, method):
    out = tmp_path / "run"
    assert main(_partial_table_run(tmp_path, out, *method)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    train_rows = metrics["train_samples"]
    labelled = metrics["labelled_rows"]
    assert labelled["coarse"] == train_rows
    assert 0 < labelled["fine"] <= 0.3 * train_rows  # 30% of the rows of each fine class (2/3 of the rows have one)
    err = capsys.readouterr().err
    assert f"labelled per level: coarse {labelled['coarse']}, fine {labelled['fine']}" in err
    assert "train.labelled_share=0.5 draws half of each batch" in err  # uniform batches: the hint
    assert 0 <= metrics["test"]["fine"]["linear_top1"] <= 1


def test_a_run_with_a_labelled_share_gets_no_batch_hint(tmp_path, capsys):
    assert main(_partial_table_run(tmp_path, tmp_path / "run", "train.labelled_share=0.5")) == 0
    err = capsys.readouterr().err
    assert "labelled per level" in err and "train.labelled_share=0.5 draws" not in err


class _Identity(torch.nn.Module):
    def encode(self, x):
        return x


def test_validation_monitor_draws_its_bank_from_labelled_rows():
    toy = dataset()
    toy.train = keep_level_labels(toy.train, HIERARCHY, {"fine": 0.05}, seed=0)
    known = torch.nonzero(toy.train.targets["fine"] >= 0).flatten()
    only_labelled = Dataset("toy", "features", toy.levels, toy.train.subset(known), toy.test, toy.val,
                            hierarchy=HIERARCHY)
    device = torch.device("cpu")
    score = monitor_score(_Identity(), toy, device, train_samples=6, knn_k=3)
    assert score == monitor_score(_Identity(), only_labelled, device, train_samples=6, knn_k=3)
