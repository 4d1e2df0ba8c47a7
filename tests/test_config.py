"""Config loading, --set overrides and validation messages."""

from __future__ import annotations

import copy

import pytest
from conftest import QUICKSTART

from mlcl.errors import ConfigError
from mlcl.train.config import Config, apply_overrides, config_from_dict, load_config, parse_override, save_config


def test_defaults_validate_and_round_trip(tmp_path):
    config = Config().validate()
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_quickstart_config_loads():
    config = load_config(QUICKSTART)
    assert config.method.name == "mlcl" and config.method.heads == ["coarse", "fine"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("train.epochs=5", (["train", "epochs"], 5, False)),
        ("loss.temperatures=[0.1,0.5]", (["loss", "temperatures"], [0.1, 0.5], False)),
        ("data.path=/tmp/x.csv", (["data", "path"], "/tmp/x.csv", False)),
        ("train.grad_clip=null", (["train", "grad_clip"], None, False)),
        ("data.options:={a: 1}", (["data", "options"], {"a": 1}, True)),
        ("data.path=a=b", (["data", "path"], "a=b", False)),
    ],
)
def test_parse_override_reads_yaml_values(text, expected):
    assert parse_override(text) == expected


def test_overrides_apply_to_nested_sections():
    raw = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=7", "method.temperatures=[0.2,0.1]"])
    config = config_from_dict(raw)
    assert config.train.epochs == 7 and config.method.temperatures == [0.2, 0.1]


def test_ints_are_accepted_where_floats_are_expected_and_single_values_become_lists():
    config = config_from_dict({"train": {"lr": 1}, "method": {"temperatures": 0.5}})
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config_from_dict(apply_overrides({}, ["train.lr=3e-4"])).train.lr == 3e-4  # YAML 1.1 reads a string
    assert config.method.temperatures == [0.5]


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"trian": {}}, r"unknown config key 'trian' \(did you mean 'train'\?\)"),
        ({"train": {"epoch": 3}}, r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
        ({"train": {"epochs": "ten"}}, r"train.epochs must be of type int, got 'ten'"),
        ({"train": {"lr": -1.0}}, r"train.lr must be > 0"),
        ({"train": {"batch_size": 1}}, r"batch_size must be >= 2"),
        ({"method": {"temperatures": [0.1, 0.0]}}, r"temperatures\[1\] must be > 0"),
        ({"method": {"name": "supcom"}}, r"did you mean 'supcon'"),
        ({"method": {"weights": [1.0, -2.0]}}, r"weights\[1\] must be >= 0"),
        ({"data": {"fraction": 0.0}}, r"data.fraction must be in \(0.0, 1.0\]"),
        ({"data": {"name": "table"}}, r"data.path is required"),
        ({"data": {"noise": {"rate": 1.5}}}, r"data.noise.rate must be in"),
        ({"train": []}, r"train must be a mapping"),
        ({"data": {"fraction": float("nan")}}, r"data.fraction must be of type float \(a finite number\), got nan"),
        ({"data": {"noise": {"rate": "nan"}}}, r"data.noise.rate must be of type float \(a finite number\)"),
        ({"data": {"k_shot": 5, "fraction": 0.5}}, r"k_shot and data.fraction both limit the training labels"),
        ({"train": {"weight_decay": -1}}, r"train.weight_decay must be >= 0"),
        ({"train": {"momentum": -5}}, r"train.momentum must be in \[0.0, 1.0\)"),
        ({"train": {"threads": 0}}, r"train.threads must be >= 1 or null"),
        ({"train": {"warmup_epochs": -3}}, r"train.warmup_epochs must be in \[0, train.epochs=10\]"),
        ({"train": {"warmup_epochs": 27, "epochs": 9}}, r"train.warmup_epochs must be in \[0, train.epochs=9\]"),
        ({"train": {"augment": {"feature_dropout": 1.5}}}, r"train.augment.feature_dropout must be in \[0.0, 1.0\)"),
        ({"train": {"augment": {"feature_noise": -1}}}, r"train.augment.feature_noise must be >= 0"),
        ({"eval": {"map_points": 0}}, r"eval.map_points must be >= 1"),
        ({"eval": {"probe_epochs": 0}}, r"eval.probe_epochs must be >= 1"),
        ({"eval": {"features": ["encoder", "head"]}}, r"eval.features must be one of .*\(did you mean 'heads'\?\)"),
        ({"eval": {"features": []}}, r"eval.features must be a non-empty list"),
        ({"eval": {"features": ["concat", "concat"]}}, r"eval.features lists a name twice"),
        ({"model": {"encoder": "mlpp"}}, r"model.encoder must be one of .*got 'mlpp' \(did you mean 'mlp'\?\)"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_set_merges_a_mapping_key_by_key_and_colon_equals_replaces_it():
    raw = {"train": {"augment": {"hflip": False, "crop_padding": 2}}, "data": {"options": {"val_size": 100}}}
    merged = apply_overrides(raw, ["train.augment={erase_prob: 0.5}", "data.options={limit_train: 300}"])
    assert merged["train"]["augment"] == {"hflip": False, "crop_padding": 2, "erase_prob": 0.5}
    assert merged["data"]["options"] == {"val_size": 100, "limit_train": 300}
    replaced = apply_overrides(merged, ["train.augment:={erase_prob: 0.0}", "data.options:={}"])
    assert replaced["train"]["augment"] == {"erase_prob": 0.0} and replaced["data"]["options"] == {}
    assert apply_overrides({"train": {"epochs": 3}}, ["train:={lr: 0.5}"]) == {"train": {"lr": 0.5}}
    assert apply_overrides({"seed": 1}, ["seed=2"]) == {"seed": 2}


def test_options_follow_their_encoder_and_dataset():
    file = {"data": {"name": "fashion-mnist", "options": {"val_size": 5000}},
            "model": {"encoder": "small_cnn", "encoder_options": {"width": 32, "out_dim": 128}}}
    raw = apply_overrides(copy.deepcopy(file), [
        "model.encoder_options.hidden=[64]", "model.encoder=minilm", "data.name=table",
        "data.options={input: text, levels: [fine]}"])
    # the file's options belonged to the old encoder / dataset; the ones given with --set stay, in any order
    assert raw["model"]["encoder_options"] == {"hidden": [64]}
    assert raw["data"]["options"] == {"input": "text", "levels": ["fine"]}
    same = apply_overrides(copy.deepcopy(file), ["model.encoder=small_cnn", "data.options.limit_train=9"])
    assert same["model"]["encoder_options"] == {"width": 32, "out_dim": 128}
    assert same["data"]["options"] == {"val_size": 5000, "limit_train": 9}
    # an encoder left at its default is changed too: options written for small_cnn go with it
    assert apply_overrides({"model": {"encoder_options": {"width": 8}}}, ["model={encoder: mlp}"]) == {
        "model": {"encoder": "mlp"}}


def test_set_fills_an_empty_section_of_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\nmethod:\n  name: supcon\n")
    assert load_config(path, ["train.epochs=3"]).train.epochs == 3


def test_encoder_names_match_the_encoder_registry():
    from mlcl.models.encoders import ENCODERS
    from mlcl.train.config import ENCODER_NAMES

    assert ENCODER_NAMES == tuple(ENCODERS)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line \d+"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(binary)


@pytest.mark.parametrize("text", ["train.epochs", "=3", "train.epochs=[1,"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [text])


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mlcl.cli import main  # noqa: E402

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["name", "epochs", "lr", "temperatures", "heads", "rate", "x"]), inner, max_size=3),
    max_leaves=8)
_sections = st.dictionaries(
    st.sampled_from(["seed", "data", "model", "method", "train", "eval", "trian"]),
    st.one_of(_values, st.dictionaries(st.sampled_from(
        ["name", "epochs", "lr", "temperatures", "weights", "heads", "fraction", "noise", "batch_size",
         "encoder", "views", "precision", "knn_k", "optimizer", "grad_clip"]), _values, max_size=4)),
    max_size=4)


@settings(max_examples=150, deadline=None)
@given(raw=_sections)
def test_fuzzed_configs_give_a_config_or_a_config_error(raw):
    try:
        config = config_from_dict(raw)
    except ConfigError:
        return
    assert isinstance(config, Config)


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=40))
def test_fuzzed_config_files_give_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass


def test_datasets_command_lists_every_builtin(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("fashion-mnist", "fashion-mnist-grid", "wordnet-nouns", "wordnet-nouns-deep", "bbc-news", "digits"):
        assert name in out
