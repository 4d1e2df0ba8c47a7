"""The Run: one assembly of data, objective and model; one rule for which checkpoint is "best";
methods as classes in a registry, with their policies injected."""

from __future__ import annotations

import pytest
import torch
from conftest import QUICKSTART

from mlcl.data.registry import load_dataset
from mlcl.errors import CheckpointError, ConfigError
from mlcl.losses import SupConLoss
from mlcl.losses.himulcon import HiMulConLoss
from mlcl.train.checkpoint import load_checkpoint, save_checkpoint
from mlcl.train.config import load_config
from mlcl.train.loop import start_run
from mlcl.train.methods import METHODS, HiMulCon, Method, Objective
from mlcl.train.run import build_run, load_run

# 270 validation rows: enough for the monitor to keep a best.pt (selection.MIN_VALIDATION_ROWS).
DIGITS = ["data.name=digits", "data.options={test_fraction: 0.2, val_fraction: 0.15}", "method.heads=[]",
          "method.temperatures=[0.1]", "method.weights=[]", "train.epochs=2", "train.batch_size=64",
          "model.encoder_options.width=4", "model.proj_hidden=16", "model.proj_dim=8", "eval.embedding_map=none",
          "train.threads=1"]


def _trained(tmp_path):
    trainer = start_run(load_config(QUICKSTART, DIGITS), tmp_path / "run", progress=False)
    trainer.train()
    return trainer.run.out_dir


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


@pytest.mark.slow
def test_load_run_best_is_the_monitored_checkpoint_and_never_an_unknown_one(tmp_path):
    run_dir = _trained(tmp_path)
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    last = load_checkpoint(last_path)
    # A best.pt that differs from last.pt, so that the test sees which one was loaded.
    best = load_checkpoint(best_path)
    best["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in last["model"].items()}
    save_checkpoint({k: v for k, v in best.items() if k != "format_version"}, best_path)

    run = load_run(run_dir, "last")
    assert _same_weights(run.model, last["model"]) and run.state["epoch"] == 2
    assert _same_weights(load_run(run_dir, "best").model, best["model"])

    # The run's record knows no best score: best.pt is stale and "best" falls back to last.pt.
    last["loop"]["best"] = None
    save_checkpoint({k: v for k, v in last.items() if k != "format_version"}, last_path)
    assert _same_weights(load_run(run_dir, "best").model, last["model"])


def test_load_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="is not a run folder"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(CheckpointError, match="mlcl continues only runs it created"):
        load_run(tmp_path)


def test_build_run_checks_the_encoder_against_the_data_before_building_anything():
    with pytest.raises(ConfigError, match="model.encoder=mlp cannot read images"):
        build_run(load_config(QUICKSTART, [*DIGITS, "model.encoder=mlp"]))


class _FinestSupCon(Method):
    """A method defined outside mlcl: the single-head SupCon loss on the finest level."""

    name = "finest-supcon"

    def plan_heads(self, dataset):
        return self._finest_head(dataset)

    def build_loss(self):
        return SupConLoss(self.heads[0].temperature)

    def relation(self, targets, batch, device):
        return targets[self.heads[0].level.name]


def test_a_new_method_is_one_class_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(METHODS, _FinestSupCon.name, _FinestSupCon)
    config = load_config(QUICKSTART, [*DIGITS, "method.name=finest-supcon"])
    dataset = load_dataset("digits")
    torch.manual_seed(0)
    z = torch.randn(1, 32, 2, 8)
    targets = {name: t[:32] for name, t in dataset.train.targets.items()}
    mine = Objective(config.method, dataset)(z, {}, targets, 2)[0]
    supcon = Objective(load_config(QUICKSTART, [*DIGITS, "method.name=supcon"]).method, dataset)
    assert torch.allclose(mine, supcon(z, {}, targets, 2)[0])
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(QUICKSTART, [*DIGITS, "method.name=finest-supcom"])


def test_himulcon_level_penalty_is_an_injected_policy():
    dataset = load_dataset("fashion-mnist", limit_train=64, val_size=0, limit_test=8)
    config = load_config(QUICKSTART, ["method.name=himulcon", "method.himulcon_mode=hmc",
                                                         "method.temperatures=[0.1]"]).method
    torch.manual_seed(0)
    z = torch.randn(64, 2, 8)
    labels = torch.stack([dataset.train.targets[level.name] for level in dataset.levels], 1)
    flat = HiMulCon(config, dataset, level_penalty=lambda levels: [1.0] * levels)
    default = HiMulCon(config, dataset)
    assert flat.build_loss()(z, labels) == pytest.approx(
        HiMulConLoss(0.1, "hmc", level_penalty=[1.0, 1.0])(z, labels).item())
    assert default.build_loss()(z, labels) == pytest.approx(HiMulConLoss(0.1, "hmc")(z, labels).item())
    assert flat.build_loss()(z, labels).item() != pytest.approx(default.build_loss()(z, labels).item())
