"""Training on every kind of input: user text tables (frozen and fine-tuned MiniLM), multi-label JSONL,
image folders, and the training options (bf16, AdamW, clipping, ResNet-18)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import EXAMPLES, train_args

from mlcl.cli import main
from mlcl.train.checkpoint import load_checkpoint

TINY = ["train.epochs=1", "eval.embedding_map=none", "model.proj_hidden=16", "model.proj_dim=8",
        "train.monitor_train_samples=50", "eval.knn_k=3"]


def train(out: Path, *overrides: str) -> dict:
    assert main(train_args(out, *TINY, *overrides)) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture
def embedding_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.slow
def test_text_table_with_frozen_minilm(tmp_path, embedding_cache):
    metrics = train(
        tmp_path / "run", "data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}",
        "data.options={input: text, levels: [coarse, fine], test_fraction: 0.5, val_fraction: 0.0}",
        "model.encoder=minilm", "model.encoder_options={hidden: [32], out_dim: 16}", "train.batch_size=4",
    )
    assert set(metrics["test"]) >= {"coarse", "fine"}
    assert any(embedding_cache.rglob("*")), "frozen MiniLM embeddings are cached on disk"


@pytest.mark.slow
def test_text_table_with_leaf_labels_and_hierarchy_file(tmp_path, embedding_cache):
    metrics = train(
        tmp_path / "run", "data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}",
        f"data.options={{input: text, leaf: fine, hierarchy: {EXAMPLES / 'tiny_hierarchy.json'}, "
        "test_fraction: 0.5, val_fraction: 0.0}",
        "model.encoder=minilm", "model.encoder_options={hidden: [32], out_dim: 16}", "train.batch_size=4",
    )
    assert 0.0 <= metrics["test"]["consistency"]["linear"] <= 1.0


@pytest.mark.slow
def test_fine_tuned_minilm_with_dropout_and_token_mask_views(tmp_path):
    metrics = train(
        tmp_path / "run", "data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}",
        "data.options={input: text, levels: [coarse, fine], test_fraction: 0.5, val_fraction: 0.0}",
        "model.encoder=minilm", "model.encoder_options={trainable: true, max_length: 32, mask_rate: 0.15}",
        "train.batch_size=4",
        "train.optimizer=adamw", "train.lr=2e-5",
    )
    assert set(metrics["test"]) >= {"coarse", "fine"}


@pytest.mark.slow
def test_multilabel_jsonl(tmp_path, embedding_cache):
    metrics = train(
        tmp_path / "run", "data.name=table", f"data.path={EXAMPLES / 'tiny_multilabel.jsonl'}",
        "data.options={input: text, multi_label: labels, test_fraction: 0.34, val_fraction: 0.25}",
        "model.encoder=minilm", "model.encoder_options={hidden: [32], out_dim: 16}", "train.batch_size=4",
        "method.heads=[labels]", "method.temperatures=[0.2]", "method.weights=[1.0]",
    )
    assert set(metrics["test"]["labels"]) == {"mAP", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"}


@pytest.mark.slow
def test_image_folder_with_resnet_bf16_adamw_and_clipping(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for coarse, fines in {"round": ["ball", "coin"], "square": ["box", "tile"]}.items():
        for i, fine in enumerate(fines):
            folder = root / coarse / fine
            folder.mkdir(parents=True)
            for k in range(8):
                image = rng.random((12, 12)) * 0.3
                image[2 * i : 2 * i + 6, 3:9] = 1.0 if coarse == "round" else 0.6
                plt.imsave(folder / f"{k}.png", image, cmap="gray", vmin=0, vmax=1)
    metrics = train(
        tmp_path / "run", "data.name=image-folder", f"data.path={root}",
        "data.options={test_fraction: 0.25, val_fraction: 0.25}", "model.encoder=resnet18",
        "model.encoder_options={width: 4}", "train.batch_size=8", "train.precision=bf16", "train.optimizer=adamw",
        "train.lr=1e-3", "train.grad_clip=1.0",
    )
    assert set(metrics["test"]) >= {"coarse", "fine"}
    # 8 validation images are too few to choose an epoch by: the last one is evaluated, and no best.pt kept
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    assert "the last epoch" in metrics["checkpoint"]["reason"]


@pytest.mark.slow
def test_embed_a_new_table_file_with_a_trained_text_run(tmp_path, embedding_cache):
    run = tmp_path / "run"
    train(run, "data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}",
          "data.options={input: text, levels: [coarse, fine], test_fraction: 0.5, val_fraction: 0.0}",
          "model.encoder=minilm", "model.encoder_options={hidden: [32], out_dim: 16}", "train.batch_size=4")
    out = tmp_path / "fine.csv"
    assert main(["embed", str(run), "--head", "fine", "--input", str(EXAMPLES / "tiny_hierarchy.csv"),
                 "--out", str(out)]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header == ["id", "e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7"]  # a file given with --input: no labels
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape == (12, 9) and table[:, 0].tolist() == list(range(2, 14))  # ids: the rows' line numbers
    np.testing.assert_allclose(np.linalg.norm(table[:, 1:], axis=1), 1.0, rtol=1e-4)  # head embeddings are unit vectors
    unlabelled = tmp_path / "new.csv"  # new samples: only the input column
    unlabelled.write_text("text\nA cotton shirt\nLeather boots for winter\n")
    assert main(["embed", str(run), "--head", "fine", "--input", str(unlabelled), "--out", str(out)]) == 2  # exists
    assert main(["embed", str(run), "--head", "fine", "--input", str(unlabelled), "--out", str(out),
                 "--overwrite"]) == 0
    assert np.loadtxt(out, delimiter=",", skiprows=1).shape == (2, 9)
    assert main(["embed", str(tmp_path), "--head", "fine", "--out", str(out)]) == 2  # not a run
    assert main(["embed", str(run), "--head", "fine", "--input", str(tmp_path / "nope.csv"),
                 "--out", str(out)]) == 2
    assert main(["embed", str(run), "--head", "fine", "--out", str(tmp_path / "x.txt")]) == 2


TEXT_TABLE = ["data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}",
              "data.options={input: text, levels: [coarse, fine], test_fraction: 0.5, val_fraction: 0.0}",
              "model.encoder=hf", "train.batch_size=4"]


@pytest.mark.slow
def test_frozen_hf_encoder_embeds_with_its_own_model(tmp_path, embedding_cache, tiny_model_dir):
    run = tmp_path / "run"
    train(run, *TEXT_TABLE,
          f"model.encoder_options={{model_name_or_path: {tiny_model_dir}, max_length: 16, hidden: [24], out_dim: 8}}")
    weights = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    first = next(v for k, v in weights.items() if k.startswith("encoder.") and v.ndim == 2)
    assert first.shape == (24, 32)  # the MLP reads the tiny model's 32-d sentence embeddings, not MiniLM's 384
    # `mlcl embed --input` embeds new texts with the same frozen model and its options
    out = tmp_path / "encoder.npy"
    assert main(["embed", str(run), "--head", "encoder", "--input", str(EXAMPLES / "tiny_hierarchy.csv"),
                 "--out", str(out)]) == 0
    assert np.load(out).shape == (12, 8)


@pytest.mark.parametrize("options, message", [
    ("{hidden: [8]}", "model.encoder=hf needs model.encoder_options.model_name_or_path"),
    ("{model_name_or_path: {path}, mask_rate: 0.1}", "set model.encoder_options.trainable=true or drop mask_rate"),
    ("{model_name_or_path: {path}, polling: mean}", "not an option of a frozen text encoder (did you mean 'pooling'?)"),
])
def test_frozen_text_encoder_option_errors(tmp_path, embedding_cache, tiny_model_dir, capsys, options, message):
    options = options.replace("{path}", str(tiny_model_dir))
    assert main(train_args(tmp_path / "run", *TINY, *TEXT_TABLE, f"model.encoder_options={options}")) == 2
    assert message in capsys.readouterr().err


def test_an_input_column_that_is_also_a_label_is_refused(tmp_path, capsys):
    overrides = [*TINY, "data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}",
                 "data.options={input: fine, levels: [coarse, fine]}"]
    assert main(train_args(tmp_path / "run", *overrides)) == 2
    assert "column 'fine' is both an input and a label" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    ("{input: text, level: [fine]}",
     "unknown option 'level' for data.name=table (data.options) (did you mean 'levels'"),
    ("{input:text, levels: [fine]}", "unknown option 'input:text'"),
    ("{input: text, levels: [fine], test_fraction: abc}",
     "option 'test_fraction' of data.name=table (data.options) must be of type float, got 'abc'"),
    ("{input: text, levels: [fine], groups: [a, b]}",
     "option 'groups' of data.name=table (data.options) must be of type "
                                                      "Mapping[str, str] | None"),
    ("{input: 5, levels: [fine]}",
     "option 'input' of data.name=table (data.options) must be of type str | Sequence[str]"),
    ("{levels: [fine]}", "data.name=table (data.options) needs the option 'input' (of type str | Sequence[str])"),
])
def test_table_option_mistakes_are_one_line_errors(tmp_path, capsys, options, message):
    overrides = [*TINY, "data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}", f"data.options={options}"]
    assert main(train_args(tmp_path / "run", *overrides)) == 2
    assert message in capsys.readouterr().err


def test_k_shot_names_the_class_that_is_too_small(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x0,x1,fine\n" + "".join(f"{i},{i % 3},{'boot' if i % 2 else 'sneaker'}\n" for i in range(12)))
    overrides = [*TINY, "data.name=table", f"data.path={data}", "data.k_shot=1000", "model.encoder=mlp",
                 "model.encoder_options={}", "method.heads=[fine]", "method.temperatures=0.1", "method.weights=1.0",
                 "data.options={input: [x0, x1], levels: [fine]}"]
    assert main(train_args(tmp_path / "run", *overrides)) == 2
    err = capsys.readouterr().err
    assert "fewer than k=1000" in err and "class 0 " not in err
    assert "class 'boot' at level 'fine'" in err or "class 'sneaker' at level 'fine'" in err


def test_a_numeric_text_column_with_a_text_encoder_suggests_input_kind_text(tmp_path, capsys):
    data = tmp_path / "codes.csv"
    data.write_text("text,fine\n" + "".join(f"{1000 + i},{'ab'[i % 2]}\n" for i in range(12)))
    overrides = [*TINY, "data.name=table", f"data.path={data}", "model.encoder=minilm", "model.encoder_options={}",
                 "method.heads=[fine]", "method.temperatures=0.1", "method.weights=1.0",
                 "data.options={input: text, levels: [fine]}"]
    assert main(train_args(tmp_path / "run", *overrides)) == 2
    err = capsys.readouterr().err.strip()
    assert "was read as numbers" in err and "data.options.input_kind=text" in err and "\n" not in err
