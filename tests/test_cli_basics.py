"""The small commands: --version, datasets, config, and the config reference in docs/config.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mlcl.cli import main
from mlcl.data.registry import DATASETS
from mlcl.train.config import load_config
from mlcl.train.config_reference import config_reference

ROOT = Path(__file__).parents[1]


def test_version_matches_the_package_metadata(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert capsys.readouterr().out.strip() == f"mlcl {version}"


def test_datasets_table_has_a_header_row(capsys):
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "modality", "structure"]
    assert len(lines) == 1 + len(DATASETS) and lines[1].startswith("fashion-mnist ")


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", "--config", "configs/quickstart.yaml", "--set", "model.encoder=mlp",
                 "--set", "data.options={limit_train: 4}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config("configs/quickstart.yaml", ["model.encoder=mlp", "data.options.limit_train=4"])
    assert printed == expected.to_dict()
    assert printed["model"]["encoder_options"] == {}  # the CNN's options went with the CNN
    assert printed["data"]["options"] == {"val_size": 5000, "limit_train": 4}  # merged
    assert main(["config", "--set", "train.epochs=0"]) == 2
    assert "train.epochs must be >= 1" in capsys.readouterr().err


def test_the_config_reference_is_current_and_lists_every_key():
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert text == config_reference(), "docs/config.md is stale: run `mlcl config --reference > docs/config.md`"

    def keys(node, prefix=""):
        for key, value in node.items():
            full = f"{prefix}{key}"
            yield full
            if isinstance(value, dict) and key not in ("options", "encoder_options"):
                yield from keys(value, full + ".")

    for key in keys(load_config(None).to_dict()):
        assert f"| `{key}` |" in text, key
    for option in ("val_size", "test_fraction", "val_fraction", "multi_label", "width", "model_name_or_path"):
        assert f"| `{option}` |" in text, option


def test_train_without_config_says_it_starts_from_the_defaults(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "no --config, so this run starts from the built-in defaults" in err
    assert "train.epochs must be >= 1" in err


def test_mlcl_set_adds_overrides_after_the_commands_own_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv("MLCL_SET", "train.epochs=1 'data.options={limit_train: 7}'")
    assert main(["config", "--config", "configs/quickstart.yaml", "--set", "train.epochs=5"]) == 0
    captured = capsys.readouterr()
    printed = yaml.safe_load(captured.out)
    assert printed["train"]["epochs"] == 1  # after the command's own --set
    assert printed["data"]["options"] == {"val_size": 5000, "limit_train": 7}
    assert "MLCL_SET adds --set train.epochs=1 --set 'data.options={limit_train: 7}'" in captured.err


def test_class_colours_are_not_light_and_dark_pairs_of_one_hue():
    import colorsys
    import itertools

    import matplotlib

    from mlcl.train.plots import class_colours

    def closest(colours):
        return min(sum((a - b) ** 2 for a, b in zip(x, y)) ** 0.5 for x, y in itertools.combinations(colours, 2))

    def same_hue_pairs(colours):
        hues = [colorsys.rgb_to_hsv(*c)[0] for c in colours if colorsys.rgb_to_hsv(*c)[1] > 0.2]
        return sum(min(abs(a - b), 1 - abs(a - b)) < 0.02 for a, b in itertools.combinations(hues, 2))

    tab20 = [c[:3] for c in matplotlib.colormaps["tab20"].colors]
    assert same_hue_pairs(tab20[:10]) >= 2  # what the maps used: blue / light blue, orange / light orange, ...
    assert same_hue_pairs(class_colours(10)) == 0
    assert closest(class_colours(20)) > 2 * closest(tab20)
    assert len(set(class_colours(27))) == 27
