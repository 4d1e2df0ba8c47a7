"""Data-file handling on tiny generated files: search paths and the not-found error, downloads, the
IDX reader, the stratified split, Fashion-MNIST / grid loaders on fake IDX files, and the WordNet parser
and loaders on a hand-written data.noun in the real format (with one training run on the deep variant)."""

from __future__ import annotations

import gzip
import json
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args

import mlcl
from mlcl.cli import main
from mlcl.data import fashion_mnist, grid, wordnet, wordnet_deep
from mlcl.data.paths import find_data_file, urllib_download
from mlcl.data.splits import stratified_split
from mlcl.errors import DataError


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """An empty $MLCL_DATA_DIR, offline."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("MLCL_DATA_DIR", str(root))
    monkeypatch.setenv("MLCL_OFFLINE", "1")
    return root


# --- search paths, not-found error, download ------------------------------------------------------


def test_not_found_error_names_every_path_the_package_and_the_env_var(data_env, tmp_path):
    debian = [tmp_path / "deb1", tmp_path / "deb2"]
    with pytest.raises(DataError) as info:
        find_data_file("fashion-mnist", ["a.gz", "a"], debian, "dataset-fashion-mnist", "http://x/a.gz")
    message = str(info.value)
    assert "\n" not in message
    for directory in [data_env / "fashion-mnist", data_env, *debian]:
        assert str(directory / "a.gz") in message and str(directory / "a") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "MLCL_DATA_DIR" in message
    assert "MLCL_OFFLINE" in message  # why the download was not tried


def test_search_order_data_dir_subfolder_then_root_then_debian(data_env, tmp_path):
    debian = tmp_path / "deb"
    debian.mkdir()
    (debian / "f.txt").write_text("debian")
    assert find_data_file("ds", ["f.txt"], [debian], "pkg") == debian / "f.txt"
    (data_env / "f.txt").write_text("root")
    assert find_data_file("ds", ["f.txt"], [debian], "pkg") == data_env / "f.txt"
    (data_env / "ds").mkdir()
    (data_env / "ds" / "f.txt").write_text("sub")
    assert find_data_file("ds", ["f.txt"], [debian], "pkg") == data_env / "ds" / "f.txt"
    # an explicit data_dir wins over the environment variable
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("explicit")
    assert find_data_file("ds", ["f.txt"], [debian], "pkg", data_dir=other) == other / "f.txt"


def test_download_is_injectable_and_lands_in_the_data_dir(data_env, monkeypatch):
    monkeypatch.delenv("MLCL_OFFLINE")
    calls = []

    def fake_download(url: str, dest: Path) -> None:
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"x")

    path = find_data_file("ds", ["f.gz", "f"], [], "pkg", "http://example/f.gz", download=fake_download)
    assert path == data_env / "ds" / "f.gz" and calls == ["http://example/f.gz"]


def test_download_failure_and_offline_are_reported(data_env, monkeypatch):
    def failing(url: str, dest: Path) -> None:
        raise urllib.error.URLError("no route to host")

    with pytest.raises(DataError, match="skipped"):
        find_data_file("ds", ["f"], [], "pkg", "http://example/f", download=failing)
    monkeypatch.delenv("MLCL_OFFLINE")
    with pytest.raises(DataError, match=r"download from http://example/f failed \(.*no route to host"):
        find_data_file("ds", ["f"], [], "pkg", "http://example/f", download=failing)


def test_urllib_download_is_atomic(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "out" / "f.bin"
    urllib_download(source.as_uri(), dest)
    assert dest.read_bytes() == b"payload"
    with pytest.raises(OSError):
        urllib_download((tmp_path / "missing.bin").as_uri(), tmp_path / "out" / "g.bin")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]  # no partial file left


# --- stratified split -----------------------------------------------------------------------------


def test_stratified_split_sizes_cover_proportions_and_determinism():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    parts = stratified_split(labels, [20, 10], seed=3)
    assert [len(p) for p in parts] == [20, 10, 70]
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(100))
    assert labels[parts[0]].bincount().tolist() == [12, 6, 2]
    assert labels[parts[1]].bincount().tolist() == [6, 3, 1]
    again = stratified_split(labels, [20, 10], seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not torch.equal(parts[0], stratified_split(labels, [20, 10], seed=4)[0])
    with pytest.raises(DataError, match="sizes"):
        stratified_split(labels, [90, 20], seed=0)


# --- IDX reader -----------------------------------------------------------------------------------

_CODES = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file holding ``array`` (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_read_idx_round_trip(tmp_path, name, dtype):
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    if dtype != "uint8":
        array -= 5  # negative values check the signed decoding
    out = fashion_mnist.read_idx(write_idx(tmp_path / name, array))
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out.numpy(), array)


@pytest.mark.parametrize("corrupt, match", [
    (lambda raw: b"\x01\x02" + raw[2:], "bad magic"),
    (lambda raw: raw[:-3], "truncated"),
    (lambda raw: raw[:6], "header truncated"),
    (lambda raw: b"", "bad magic"),
])
def test_read_idx_rejects_corrupt_files_naming_them(tmp_path, corrupt, match):
    good = write_idx(tmp_path / "good.idx", np.zeros((2, 3), dtype=np.uint8)).read_bytes()
    bad = tmp_path / "bad.idx"
    bad.write_bytes(corrupt(good))
    with pytest.raises(DataError, match=match) as info:
        fashion_mnist.read_idx(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_read_idx_rejects_a_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((50, 50), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="gzip") as info:
        fashion_mnist.read_idx(path)
    assert str(path) in str(info.value)


# --- Fashion-MNIST and grid loaders on fake IDX files ---------------------------------------------


def write_fake_fashion(root: Path, n_train: int = 200, n_test: int = 50) -> Path:
    """Fake Fashion-MNIST files: every pixel of an image is ``base + label`` (train base 10, test 100)."""
    root.mkdir(parents=True, exist_ok=True)
    sizes_and_bases = ((n_train, 10), (n_test, 100))
    for (images_stem, labels_stem), (n, base) in zip(fashion_mnist.FILES.values(), sizes_and_bases):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.broadcast_to((base + labels)[:, None, None], (n, 28, 28)).astype(np.uint8)
        write_idx(root / f"{images_stem}.gz", images)
        write_idx(root / labels_stem, labels)  # plain, to cover both forms
    return root


def test_fashion_loader_on_fake_files(tmp_path, data_env):
    root = write_fake_fashion(tmp_path / "fake")
    data = fashion_mnist.load_fashion_mnist(val_size=20, limit_test=30, data_dir=root)
    assert data.level_names == ["coarse", "fine"]
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 30)
    assert data.val.targets["fine"].bincount().tolist() == [2] * 10  # stratified
    assert data.train.inputs.shape == (180, 1, 28, 28) and data.train.inputs.dtype == torch.float32
    for split in (data.train, data.val, data.test):
        fine = split.targets["fine"]
        assert torch.equal(split.targets["coarse"], torch.tensor(fashion_mnist.FINE2COARSE)[fine])
    assert torch.equal((data.test.inputs[:, 0, 0, 0] * 255).round().long() - 100, data.test.targets["fine"])


def test_fashion_loader_rejects_out_of_range_labels_and_val_size(tmp_path, data_env):
    root = write_fake_fashion(tmp_path / "fake")
    with pytest.raises(DataError, match="val_size must lie in 0..199"):
        fashion_mnist.load_fashion_mnist(val_size=200, data_dir=root)
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(50, 12, dtype=np.uint8))
    with pytest.raises(DataError, match=r"0\.\.9, found 12\.\.12"):
        fashion_mnist.load_fashion_mnist(val_size=20, data_dir=root)


def cell_labels(canvas: torch.Tensor, base: int) -> list[set[int]]:
    """The fine label in each non-empty cell of fake canvases ``(N, 1, 56, 56)``."""
    values = (canvas[:, 0, ::28, ::28] * 255).round().long().reshape(len(canvas), 4)
    return [{v - base for v in row.tolist() if v} for row in values]


def test_grid_on_fake_files_targets_match_the_cells(tmp_path, data_env):
    root = write_fake_fashion(tmp_path / "fake")
    data = grid.load_fashion_mnist_grid(n_train=300, n_val=60, n_test=100, seed=1, data_dir=root)
    assert data.multi_label and data.train.inputs.shape == (300, 1, 56, 56)
    parents = torch.tensor(fashion_mnist.FINE2COARSE)
    for split, base in ((data.train, 10), (data.val, 10), (data.test, 100)):
        for row, labels in enumerate(cell_labels(split.inputs, base)):
            assert labels == set(torch.nonzero(split.targets["fine"][row]).squeeze(1).tolist())
            coarse = set(parents[sorted(labels)].tolist())
            assert coarse == set(torch.nonzero(split.targets["coarse"][row]).squeeze(1).tolist())
    filled = (data.train.inputs.reshape(300, 2, 28, 2, 28).amax(dim=(2, 4)) > 0).sum((1, 2))
    assert set(filled.tolist()) == {1, 2, 3, 4}


def test_grid_rejects_bad_item_counts(tmp_path, data_env):
    with pytest.raises(DataError, match="max_items"):
        grid.load_fashion_mnist_grid(min_items=3, max_items=2, data_dir=tmp_path)


# --- WordNet on a hand-written data.noun ----------------------------------------------------------

HEADER = """\
  1 This software and database is being provided to you, the LICENSEE, by  
  2 Princeton University under the following license.  
  3   
"""
SYNSETS = """\
00000100 03 n 01 entity 0 003 ~ 00000200 n 0000 ~ 00000800 n 0000 ~ 00001200 n 0000 | that which exists  
00000200 03 n 01 organism 0 001 @ 00000100 n 0000 | a living thing  
00000300 05 n 01 animal 0 002 @ 00000200 n 0000 + 00000001 v 0101 | a living organism that moves  
00000400 05 n 02 dog 0 domestic_dog 0 001 @ 00000300 n 0000 | a domesticated canine; "the dog barked"  
00000500 05 n 01 cat 0 001 @ 00000300 n 0000 | a small feline  
00000600 05 n 01 Rex 0 001 @i 00000400 n 0000 | a famous dog  
00000700 20 n 01 tree 0 001 @ 00000200 n 0000 | a tall woody plant  
00000800 06 n 01 artifact 0 001 @ 00000100 n 0000 | a man-made object  
00000900 06 n 01 tool 0 001 @ 00000800 n 0000 | an implement  
00001000 06 n 01 hammer 0 001 @ 00000900 n 0000 | a hand tool for pounding  
00001100 06 n 01 pet_rock 0 002 @ 00000900 n 0000 @ 00000300 n 0000 | a rock kept as a pet  
00001200 03 n 01 abstraction 0 001 @ 00000100 n 0000 | a general concept  
00001300 09 n 01 idea 0 001 @ 00001200 n 0000 | a thought  
"""


@pytest.fixture
def tiny_wordnet(tmp_path) -> Path:
    root = tmp_path / "wn"
    (root / "wordnet").mkdir(parents=True)
    (root / "wordnet" / "data.noun").write_text(HEADER + SYNSETS)
    return root


def test_parse_line_fields():
    synset = wordnet.parse_line(SYNSETS.splitlines()[3])
    assert synset.offset == 400 and synset.lexname == "noun.animal"
    assert synset.lemmas == ("dog", "domestic dog") and synset.hypernyms == (300,)
    assert synset.gloss == 'a domesticated canine; "the dog barked"'
    assert wordnet.parse_line(SYNSETS.splitlines()[5]).hypernyms == (400,)  # instance hypernym


def test_tiny_wordnet_levels_and_majority_lexfile(tiny_wordnet, data_env):
    data = wordnet.load_wordnet_nouns(depth=1, min_class_size=3, test_fraction=0.25, val_fraction=0.25,
                                      data_dir=tiny_wordnet)
    assert data.levels[0].classes == ["noun.animal", "noun.artifact"]
    assert data.levels[1].classes == ["organism", "artifact"]
    texts = data.train.inputs + data.val.inputs + data.test.inputs
    fine = torch.cat([data.train.targets["fine"], data.val.targets["fine"], data.test.targets["fine"]])
    by_text = dict(zip(texts, fine.tolist()))
    # organism's noun.animal descendants (animal, dog, cat, the instance Rex) make a class; its plant and
    # the noun.Tops organism synset itself are too few; pet_rock follows its first hypernym (tool ->
    # artifact); abstraction / idea (one synset per file) are below min_class_size.
    assert sorted(by_text) == sorted([
        "a living organism that moves", 'a domesticated canine; "the dog barked"', "a small feline",
        "a famous dog", "a man-made object", "an implement", "a hand tool for pounding",
        "a rock kept as a pet",
    ])
    assert by_text["a famous dog"] == 0 and by_text["a rock kept as a pet"] == 1
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    parent = data.hierarchy.parent_index("fine")
    for split in (data.train, data.val, data.test):
        assert torch.equal(split.targets["coarse"], parent[split.targets["fine"]])


def test_tiny_wordnet_lemma_text_and_errors(tiny_wordnet, data_env):
    data = wordnet.load_wordnet_nouns(depth=1, min_class_size=3, test_fraction=0.25, val_fraction=0,
                                      text="lemma+gloss", data_dir=tiny_wordnet)
    assert data.val is None
    texts = data.train.inputs + data.test.inputs
    assert 'dog, domestic dog: a domesticated canine; "the dog barked"' in texts
    every = wordnet.load_wordnet_nouns(depth=1, min_class_size=1, test_fraction=0.3, data_dir=tiny_wordnet)
    assert every.levels[0].classes == [
        "noun.Tops", "noun.animal", "noun.artifact", "noun.cognition", "noun.plant"]
    assert every.levels[1].classes == [
        "abstraction (Tops)", "organism (Tops)", "organism (animal)", "artifact", "abstraction (cognition)",
        "organism (plant)"]
    assert every.hierarchy.parent_index("fine").tolist() == [0, 0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="no fine class"):
        wordnet.load_wordnet_nouns(depth=1, min_class_size=10, data_dir=tiny_wordnet)
    with pytest.raises(DataError, match="text must be one of"):
        wordnet.load_wordnet_nouns(text="lemmas", data_dir=tiny_wordnet)


def test_wordnet_malformed_line_names_file_and_line(tmp_path, data_env):
    bad = tmp_path / "bad"
    (bad / "wordnet").mkdir(parents=True)
    (bad / "wordnet" / "data.noun").write_text(HEADER + SYNSETS + "00001400 03 n 01 broken 0 005 @ | gloss\n")
    with pytest.raises(DataError, match=r"data\.noun:17: not a WordNet noun data line"):
        wordnet.load_wordnet_nouns(data_dir=bad)


def test_wordnet_hypernym_cycle_and_missing_parent():
    def synset(offset, *hypernyms):
        return wordnet.Synset(offset, 3, ("x",), hypernyms, "g")

    with pytest.raises(DataError, match="cycle"):
        wordnet.first_hypernym_paths({1: synset(1, 2), 2: synset(2, 1)})
    with pytest.raises(DataError, match="not in the file"):
        wordnet.first_hypernym_paths({1: synset(1, 9)})
    paths = wordnet.first_hypernym_paths({1: synset(1), 2: synset(2, 1), 3: synset(3, 2, 1)})
    assert paths == {1: (1,), 2: (1, 2), 3: (1, 2, 3)}


def test_wordnet_not_found_names_the_debian_package(data_env, monkeypatch):
    monkeypatch.setattr(wordnet, "DEBIAN_DIRS", (data_env / "nowhere",))
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        wordnet.load_wordnet_nouns()


# --- wordnet-nouns-deep on the hand-written data.noun and on random trees ---------------------------


def _all_rows(data):
    splits = [data.train, data.val, data.test] if data.val is not None else [data.train, data.test]
    texts = [t for split in splits for t in split.inputs]
    return texts, {level: torch.cat([split.targets[level] for split in splits]) for level in data.level_names}


def test_tiny_wordnet_deep_levels_follow_the_tree(tiny_wordnet, data_env):
    options = dict(depth=1, min_class_size=3, test_fraction=0.25, val_fraction=0.25, data_dir=tiny_wordnet)
    data = wordnet_deep.load_wordnet_nouns_deep(fine_min_class_size=2, **options)
    assert data.name == "wordnet-nouns-deep" and data.level_names == ["coarse", "mid", "fine"]
    assert data.levels[0].classes == ["noun.animal", "noun.artifact"]
    assert data.levels[1].classes == ["organism", "artifact"]
    # organism: dog gathers {dog, Rex}, animal {animal, cat}. artifact: tool gathers {tool, hammer, pet_rock}
    # and leaves artifact alone, fewer than 2, so tool is merged back into the mid class's own one.
    assert data.levels[2].classes == ["animal", "dog", "artifact (all)"]
    h = data.hierarchy
    assert h.parent_index("fine").tolist() == [0, 0, 1] and h.parent_index("mid").tolist() == [0, 1]
    texts, targets = _all_rows(data)
    fine_of = dict(zip(texts, targets["fine"].tolist()))
    assert fine_of["a famous dog"] == fine_of['a domesticated canine; "the dog barked"'] == 1
    assert fine_of["a small feline"] == fine_of["a living organism that moves"] == 0
    assert fine_of["a rock kept as a pet"] == fine_of["a man-made object"] == 2
    assert torch.equal(targets["mid"], h.parent_index("fine")[targets["fine"]])
    assert torch.equal(targets["coarse"], h.parent_index("mid")[targets["mid"]])
    # same rows, texts, parts and upper levels as wordnet-nouns with the same options
    flat = wordnet.load_wordnet_nouns(**options)
    for deep_split, flat_split in ((data.train, flat.train), (data.val, flat.val), (data.test, flat.test)):
        assert deep_split.inputs == flat_split.inputs
        assert torch.equal(deep_split.targets["mid"], flat_split.targets["fine"])
        assert torch.equal(deep_split.targets["coarse"], flat_split.targets["coarse"])


def test_tiny_wordnet_deep_one_synset_classes_and_errors(tiny_wordnet, data_env):
    options = dict(depth=1, min_class_size=3, test_fraction=0.25, val_fraction=0.0, data_dir=tiny_wordnet)
    data = wordnet_deep.load_wordnet_nouns_deep(fine_min_class_size=1, **options)
    # every synset below a mid ancestor is its own class; the artifact synset is its mid class's own one
    assert data.levels[2].classes == ["Rex", "animal", "cat", "dog", "hammer", "pet rock", "tool", "artifact (other)"]
    assert data.hierarchy.parent_index("fine").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    by_fine = wordnet_deep.load_wordnet_nouns_deep(fine_min_class_size=1, stratify="fine", **options)
    assert sorted(by_fine.train.inputs + by_fine.test.inputs) == sorted(data.train.inputs + data.test.inputs)
    with pytest.raises(DataError, match="fine_min_class_size >= 1, got 0"):
        wordnet_deep.load_wordnet_nouns_deep(fine_min_class_size=0, **options)
    with pytest.raises(DataError, match="wordnet-nouns-deep: stratify must be one of mid, fine, got 'coarse'"):
        wordnet_deep.load_wordnet_nouns_deep(stratify="coarse", **options)
    with pytest.raises(DataError, match="wordnet-nouns-deep: text must be one of"):
        wordnet_deep.load_wordnet_nouns_deep(text="lemmas", **options)


def test_unique_names_append_the_offset_to_repeated_and_taken_names():
    names = wordnet.unique_names(["a", "b", "a", "c"], [1, 2, 3, 4], frozenset({"c"}))
    assert names == ["a [00000001]", "b", "a [00000003]", "c [00000004]"]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_size", [1, 3, 8])
def test_fine_cut_is_the_deepest_partition_into_large_enough_classes(seed, min_size):
    gen = torch.Generator().manual_seed(seed)
    parent = {0: None}  # a random tree: node i hangs below one of the nodes before it
    for node in range(1, 120):
        parent[node] = int(torch.randint(node, (1,), generator=gen))
    paths = {}
    for node in parent:
        paths[node] = (*paths[parent[node]], node) if parent[node] is not None else (node,)
    depth_one = [node for node, path in paths.items() if len(path) == 2]
    ancestor = max(depth_one, key=lambda n: sum(n in path for path in paths.values()))  # the largest subtree
    rows = [n for n, p in paths.items() if ancestor in p and int(torch.randint(4, (1,), generator=gen)) > 0]
    classes = wordnet_deep.fine_cut(ancestor, rows, 1, paths, min_size)
    members = [r for _, found in classes for r in found]
    assert sorted(members) == sorted(rows)  # a partition of the rows
    nodes = [node for node, _ in classes]
    assert len(set(nodes)) == len(nodes)
    for node, found in classes:
        assert len(found) >= min(min_size, len(rows))
        for row in found:  # each row sits in the class of the deepest class node on its path
            assert node == [n for n in paths[row] if n in nodes][-1]
        if node != ancestor:  # and a class holds no child subtree that could have been a class itself
            assert max(Counter(paths[r][len(paths[node])] for r in found if r != node).values(), default=0) < min_size


def test_fine_cut_merges_the_smallest_top_class_into_a_small_leftover():
    # 1 -> 2 -> 3: node 3 gathers {3, 31, 32}, node 2 {2, 21, 22, 23}, leaving only {1} at the ancestor.
    # Merging node 3's class (the smallest) would leave its rows outside class 2 although 2 is on their
    # path, so node 2's class (the smallest class right below the ancestor) is merged instead.
    parent = {1: None, 2: 1, 3: 2, 31: 3, 32: 3, 21: 2, 22: 2, 23: 2}
    paths = {}
    for node in parent:
        paths[node] = (*paths[parent[node]], node) if parent[node] is not None else (node,)
    classes = wordnet_deep.fine_cut(1, list(parent), 0, paths, 3)
    assert sorted((node, sorted(rows)) for node, rows in classes) == [(1, [1, 2, 21, 22, 23]), (3, [3, 31, 32])]


@pytest.mark.slow
def test_mlcl_trains_one_head_per_wordnet_deep_level(tiny_wordnet, data_env, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLCL_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(train_args(
        run, "data.name=wordnet-nouns-deep", "data.options:={depth: 1, min_class_size: 3, fine_min_class_size: 2, "
        f"test_fraction: 0.25, val_fraction: 0.25, data_dir: {tiny_wordnet}}}",
        "model.encoder=hf",
        f"model.encoder_options:={{model_name_or_path: {tiny_model_dir}, hidden: [16], out_dim: 8}}",
        "method.heads=[]", "method.temperatures=[0.1]", "method.weights=[1.0]", "train.batch_size=2", "train.epochs=1",
        "model.proj_hidden=16", "model.proj_dim=8", "eval.embedding_map=none", "eval.knn_k=1",
        "train.monitor_train_samples=4")) == 0
    assert mlcl.load_run(run).head_names == ["coarse", "mid", "fine"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "wordnet-nouns-deep" and {"coarse", "mid", "fine"} <= set(metrics["test"])
