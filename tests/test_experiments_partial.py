"""The partial-label, unseen-class, per-level and deep-hierarchy experiments: grids, choices, report."""

from __future__ import annotations

import pytest

from mlcl.experiments import grids
from mlcl.experiments.report import write_report
from mlcl.experiments.runner import append_line, load_tuned, read_lines
from mlcl.experiments.tables import compare, stat


def _share_line(dataset, method, share, score):
    return {"experiment": "batch-share", "dataset": dataset, "method": method, "kind": "sweep",
            "hparams": {"labelled_share": share}, "metrics": {"fine": {"linear_top1": score}}}


def test_the_labelled_share_is_chosen_per_method_on_validation_and_reaches_the_cells(tmp_path):
    results = tmp_path / "results"
    for share, mlcl, supcon in ((0.0, 0.70, 0.80), (0.5, 0.78, 0.80), (1.0, 0.75, 0.79)):
        append_line(results / "batch-share.jsonl", _share_line("fashion-mnist", "mlcl", share, mlcl))
        append_line(results / "batch-share.jsonl", _share_line("fashion-mnist", "supcon", share, supcon))
    append_line(results / "batch-share.jsonl", {**_share_line("fashion-mnist", "ce", 1.0, 0.99), "error": "nan"})
    chosen = grids.select_shares(read_lines(results / "batch-share.jsonl"))
    assert chosen[("fashion-mnist", "mlcl")]["labelled_share"] == 0.5
    assert chosen[("fashion-mnist", "supcon")]["labelled_share"] == 0.0  # a tie goes to the smaller share
    assert ("fashion-mnist", "ce") not in chosen  # its only run failed
    tuned = load_tuned(results)
    budget = (("fine", 0.05),)
    for label, share in (("mlcl", 0.5), ("mlcl+instance", 0.5), ("supcon", 0.0), ("himulcon", 0.5)):
        cell = grids._variant("fashion-mnist", label, level_fractions=budget)
        assert grids.cell_config(cell, tuned).train.labelled_share == share, label  # himulcon: the default
    coarse = grids._variant("fashion-mnist", "supcon-coarse", level_fractions=budget)
    config = grids.cell_config(coarse, tuned)
    assert (config.method.level, config.train.labelled_share) == ("coarse", 0.0)
    assert config.data.level_fractions == {"fine": 0.05}


def test_a_sweep_cell_keeps_the_tuned_rate_and_tries_its_own_share():
    tuned = {("fashion-mnist", "mlcl"): {"lr": 0.2, "temperature": 0.2, "labelled_share": 1.0}}
    cell = grids.Cell("fashion-mnist", "mlcl", kind="sweep", level_fractions=(("fine", 0.05),),
                      hparams=(("labelled_share", 0.0),))
    assert grids.hparams_for(cell, tuned) == {"lr": 0.2, "temperature": 0.2, "labelled_share": 0.0}


def test_the_deep_hierarchy_takes_the_two_level_sets_tuning():
    tuned = {("wordnet-nouns", "mlcl"): {"lr": 0.05, "temperature": 0.2}}
    assert grids.hparams_for(grids.Cell("wordnet-nouns-deep", "mlcl"), tuned)["lr"] == 0.05


def test_new_experiments_have_distinct_cells_that_say_their_protocol():
    mixed = grids.get_experiment("mixed-granularity")
    assert len(mixed.cells) == 2 * len(grids.MIXED_FRACTIONS) * len(grids.PARTIAL_METHODS) * len(grids.SEEDS)
    assert {c.level_fractions for c in mixed.cells} == {(("fine", f),) for f in grids.MIXED_FRACTIONS}
    assert all("labels-fine" in c.id for c in mixed.cells)
    shift = grids.get_experiment("subpopulation-shift")
    assert all(c.unseen == 1 and c.id.endswith("unseen1") for c in shift.cells)
    assert [c.seed for c in shift.cells] == sorted(c.seed for c in shift.cells)  # seed-major: a stopped grid
    per_level = {(c.dataset, c.method) for c in grids.get_experiment("per-level-models").cells}
    assert ("wordnet-nouns-deep", "supcon-mid") in per_level and ("fashion-mnist", "supcon-mid") not in per_level


def test_lower_is_better_flips_the_best_baseline_and_the_sign():
    (c,) = compare({"ce": stat([1.6, 1.6]), "supcon": stat([1.4, 1.42]), "mlcl": stat([1.3, 1.32])},
                   higher_is_better=False)
    assert c.baseline == "supcon" and c.diff == pytest.approx(0.1) and c.significant


def _line(experiment, dataset, method, seed, metrics, **extra):
    return {"experiment": experiment, "dataset": dataset, "method": method, "fraction": 1.0, "noise": 0.0,
            "seed": seed, "epochs": 4, "train_seconds": 100.0, "metrics": metrics, **extra}


def _levels(fine, coarse, mid=None):
    out = {"coarse": {"linear_top1": coarse, "knn_top1": coarse}, "fine": {"linear_top1": fine, "knn_top1": fine}}
    if mid is not None:
        out = {"coarse": out["coarse"], "mid": {"linear_top1": mid, "knn_top1": mid}, "fine": out["fine"]}
    return out


def test_report_of_mixed_granularity_shift_and_per_level_models(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        for method, fine in (("supcon", 0.80), ("ce", 0.70), ("mlcl", 0.84)):
            for fraction in (0.01, 0.05):
                severity = {"linear": 1.5 - fine + 0.01 * seed}  # tree levels: lower is better
                append_line(results / "mixed-granularity.jsonl", _line(
                    "mixed-granularity", "fashion-mnist", method, seed,
                    {**_levels(fine + fraction + 0.01 * seed, 0.9), "severity": severity},
                    level_fractions={"fine": fraction}, labelled_share=0.5))
        for method, coarse_unseen in (("supcon", 0.6), ("mlcl", 0.7)):
            unseen = {"classes": ["shirt", "sandal"], "test_rows": 2000,
                      "coarse": {"linear_top1": coarse_unseen, "knn_top1": coarse_unseen},
                      "fine_1shot": {"centroid_top1": 0.55, "knn_top1": 0.55},
                      "fine_20shot": {"centroid_top1": 0.8, "knn_top1": 0.7}}
            append_line(results / "subpopulation-shift.jsonl", _line(
                "subpopulation-shift", "fashion-mnist", method, seed, {**_levels(0.8, 0.9), "unseen": unseen},
                unseen_per_parent=1))
        for method, accuracy, head in (("supcon-coarse", (0.5, 0.95, 0.7), "coarse"),
                                       ("supcon-mid", (0.6, 0.9, 0.85), "mid"),
                                       ("supcon", (0.8, 0.9, 0.8), "fine"), ("mlcl", (0.79, 0.96, 0.86), None)):
            # each head scored at its own level: SupCon's one head, MLCL's head of each level
            features = ({f"head:{level}": {level: {"linear_top1": 0.9}} for level in ("coarse", "mid", "fine")}
                        if head is None else {"head:supcon": {head: {"linear_top1": 0.8}}})
            append_line(results / "per-level-models.jsonl", _line(
                "per-level-models", "wordnet-nouns-deep", method, seed, {**_levels(*accuracy), "features": features}))
    report = write_report(results, tmp_path / "results.md")
    md = report.markdown
    mixed = md.split("## Labels at mixed granularity")[1].split("\n## ")[0]
    row = next(line for line in mixed.splitlines() if line.startswith("| fine labels 5 % "))
    assert "89.50 ± 0.71 (n=2)" in row and row.rstrip(" |").endswith("+4.00* (vs supcon)")
    assert "Share of each batch from the fine-labelled samples: ce 0.5, supcon 0.5, mlcl 0.5." in mixed
    assert "mixed-granularity-fashion-mnist.png" in {p.name for p in report.plots}
    severity = mixed.split("**mistake severity of the linear probe**")[1]
    row = next(line for line in severity.splitlines() if line.startswith("| fine labels 5 % "))
    assert "0.67 ± 0.01 (n=2)" in row and row.rstrip(" |").endswith("+0.04* (vs supcon)")  # 0.705 - 0.665
    shift = md.split("## Unseen fine classes")[1].split("\n## ")[0]
    assert "Held-out classes per seed: shirt, sandal (so the few-shot rows choose among 2 classes)." in shift
    row = next(line for line in shift.splitlines() if line.startswith("| unseen: coarse linear-probe top-1 "))
    assert row.rstrip(" |").endswith("+10.00* (vs supcon)")
    shots = [line.split(" | ")[0] for line in shift.splitlines() if line.startswith("| unseen") and "shot" in line]
    assert shots == ["| unseen: fine 1-shot nearest centroid", "| unseen: fine 1-shot kNN",
                     "| unseen: fine 20-shot nearest centroid", "| unseen: fine 20-shot kNN"]
    per_level = md.split("## One model for every level")[1].split("\n## ")[0]
    row = next(line for line in per_level.splitlines() if line.startswith("| mid linear-probe top-1 "))
    # supcon-mid's mid accuracy (not supcon's or supcon-coarse's), then its head, MLCL's encoder and mid head
    assert "| 85.00 ± 0.00 (n=2) | 80.00 ± 0.00 (n=2) | 86.00 ± 0.00 (n=2) | 90.00 ± 0.00 (n=2) |" in row
    assert row.rstrip(" |").endswith("+5.00* (vs supcon (own level), encoder)")
    assert "mlcl: 100 s, one SupCon model per level: 300 s" in per_level


def test_a_whole_cell_id_selects_that_cell_only():
    from mlcl.experiments.runner import select_cells

    cells = grids.get_experiment("batch-share").cells
    one = next(c for c in cells if c.id.endswith("__la0"))
    assert [c.id for c in select_cells(cells, [one.id])] == [one.id]  # not also …__la0.5
    part = one.id.rsplit("__", 1)[0]  # a part of ids still selects every cell containing it
    assert len(select_cells(cells, [part])) == len(grids.SHARES)
