"""WordNet noun glosses as a two-level text hierarchy.

One sample per noun synset: its gloss (optionally prefixed with its lemmas). ``coarse`` is the synset's
lexicographer file (noun.animal, noun.artifact, ...); ``fine`` is its ancestor at a fixed depth on the
first hypernym path (following the first ``@`` / ``@i`` pointer up to the root, ``entity`` = depth 0).

An ancestor's descendants can span several lexicographer files (those of ``organism`` are people,
animals and plants), so a fine class is the pair (ancestor, lexicographer file): ``organism (person)``,
``organism (animal)``, ... Every sample keeps its own lexicographer file as ``coarse``, every fine class
has exactly one coarse parent, and no synset is dropped for being "inconsistent". Synsets shallower
than ``depth`` and fine classes with fewer than ``min_class_size`` synsets are dropped. At depth 5 with
at least 50 per class this gives 22 coarse / 156 fine classes over 63,563 synsets.

The file ``data.noun`` is searched in ``$MLCL_DATA_DIR/wordnet/``, ``$MLCL_DATA_DIR/`` and
``/usr/share/wordnet/`` (Debian package ``wordnet-base``). :mod:`mlcl.data.wordnet_deep` adds a third,
finer level to these rows.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from mlcl.data.paths import find_data_file
from mlcl.data.splits import fraction_split
from mlcl.data.types import Dataset, LabeledSplit, LabelLevel
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

NAME = "wordnet-nouns"
DEBIAN_PACKAGE = "wordnet-base"
DEBIAN_DIRS = (Path("/usr/share/wordnet"),)
FILENAME = "data.noun"
FIRST_NOUN_LEXFILE = 3
NOUN_LEXNAMES = (
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
    "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time",
)  # lex_filenum 03..28
HYPERNYM_POINTERS = ("@", "@i")
TEXT_MODES = ("gloss", "lemma+gloss")
_FORMAT = "'offset lex_filenum n w_cnt word lex_id ... p_cnt ptr offset pos src/tgt ... | gloss'"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Synset:
    """One noun synset of ``data.noun``; ``hypernyms`` are the ``@``/``@i`` targets in file order."""

    offset: int
    lexfile: int
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]
    gloss: str

    @property
    def lexname(self) -> str:
        return lexname(self.lexfile)


def lexname(lexfile: int) -> str:
    """The lexicographer file name of a noun ``lex_filenum`` (3 -> ``noun.Tops``)."""
    return NOUN_LEXNAMES[lexfile - FIRST_NOUN_LEXFILE]


def parse_line(line: str) -> Synset:
    """Parse one synset line of a WordNet 3.0 noun data file; ValueError if it is malformed."""
    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise ValueError("no ' | ' before the gloss")
    fields = head.split()
    if len(fields) < 4 or fields[2] != "n":
        raise ValueError("expected a noun synset (ss_type 'n')")
    lexfile = int(fields[1])
    if not FIRST_NOUN_LEXFILE <= lexfile < FIRST_NOUN_LEXFILE + len(NOUN_LEXNAMES):
        raise ValueError(f"lex_filenum {lexfile} is not a noun file (03..28)")
    words = int(fields[3], 16)
    pointers_at = 4 + 2 * words
    lemmas = tuple(word.replace("_", " ") for word in fields[4:pointers_at:2])
    pointers = fields[pointers_at + 1:]
    if len(lemmas) != words or len(pointers) != 4 * int(fields[pointers_at]):
        raise ValueError("word or pointer count does not match the fields")
    hypernyms = tuple(int(pointers[i + 1]) for i in range(0, len(pointers), 4)
                      if pointers[i] in HYPERNYM_POINTERS and pointers[i + 2] == "n")
    return Synset(int(fields[0]), lexfile, lemmas, hypernyms, gloss.strip())


@functools.lru_cache(maxsize=2)
def _parse_cached(path: str, mtime_ns: int, size: int) -> dict[int, Synset]:
    synsets: dict[int, Synset] = {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if line.startswith("  ") or not line.strip():  # license header
                continue
            try:
                synset = parse_line(line)
            except (ValueError, IndexError) as exc:
                raise DataError(f"{path}:{number}: not a WordNet noun data line ({exc}); expected "
                                f"{_FORMAT}") from exc
            synsets[synset.offset] = synset
    if not synsets:
        raise DataError(f"{path}: no synsets found; expected a WordNet 3.0 data.noun file")
    return synsets


def _cache_key(path: str | Path) -> tuple[str, int, int]:
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size


def parse_data_noun(path: str | Path) -> dict[int, Synset]:
    """Every synset of a ``data.noun`` file by offset; parsed once per process (treat as read-only)."""
    return _parse_cached(*_cache_key(path))


def first_hypernym_paths(synsets: dict[int, Synset], source: str = FILENAME) -> dict[int, tuple[int, ...]]:
    """For each synset, the offsets from its root down to itself following the first hypernym."""
    paths: dict[int, tuple[int, ...]] = {}
    for start in synsets:
        chain, node = [], start
        while node not in paths:
            if node not in synsets:
                raise DataError(f"{source}: synset {chain[-1]:08d} has hypernym {node:08d}, which is not in "
                                "the file; use a complete data.noun")
            if node in chain:
                raise DataError(f"{source}: hypernym cycle through synset {node:08d}; use a valid data.noun")
            chain.append(node)
            parents = synsets[node].hypernyms
            if not parents:
                paths[node] = (node,)
                chain.pop()
                break
            node = parents[0]
        for child in reversed(chain):
            paths[child] = paths[node] + (child,)
            node = child
    return paths


@functools.lru_cache(maxsize=2)
def _paths_cached(path: str, mtime_ns: int, size: int) -> dict[int, tuple[int, ...]]:
    return first_hypernym_paths(_parse_cached(path, mtime_ns, size), path)


def _fine_classes(
    synsets: dict[int, Synset], paths: dict[int, tuple[int, ...]], depth: int, min_class_size: int
) -> list[tuple[int, int, list[int]]]:
    """``(lexfile, ancestor, members)`` per fine class with at least ``min_class_size`` members, sorted
    by lexicographer file, then ancestor lemma."""
    members: dict[tuple[int, int], list[int]] = defaultdict(list)
    for offset, path in paths.items():
        if len(path) > depth:
            members[synsets[offset].lexfile, path[depth]].append(offset)
    classes = [(lexfile, ancestor, offsets) for (lexfile, ancestor), offsets in members.items()
               if len(offsets) >= min_class_size]
    return sorted(classes, key=lambda c: (c[0], synsets[c[1]].lemmas[0], c[1]))


def lemma_names(synsets: dict[int, Synset], classes: list[tuple[int, int, list[int]]]) -> list[str]:
    """The first lemma of each class's ``(lexfile, ancestor, members)`` ancestor, with ``(lexfile)``
    appended where an ancestor is split over several files; not yet unique (see :func:`unique_names`)."""
    split = Counter(ancestor for _, ancestor, _ in classes)
    names = []
    for lexfile, ancestor, _ in classes:
        name = synsets[ancestor].lemmas[0]
        if split[ancestor] > 1:
            name += f" ({lexname(lexfile).removeprefix('noun.')})"
        names.append(name)
    return names


def unique_names(names: list[str], offsets: list[int], taken: frozenset[str] = frozenset()) -> list[str]:
    """``names`` with the synset offset appended to each one that is repeated or already ``taken`` (by
    another level), so that class names are unique across a hierarchy."""
    counts = Counter(names)
    return [name if counts[name] == 1 and name not in taken else f"{name} [{offset:08d}]"
            for name, offset in zip(names, offsets)]


def check_options(dataset: str, depth: int, min_class_size: int, max_per_class: int | None, text: str) -> None:
    """DataError naming ``dataset`` and the bad value if a loader option is out of range."""
    if depth < 1 or min_class_size < 1 or (max_per_class is not None and max_per_class < 1):
        raise DataError(f"{dataset}: expected depth >= 1, min_class_size >= 1 and max_per_class >= 1 or None, "
                        f"got depth={depth}, min_class_size={min_class_size}, max_per_class={max_per_class}")
    if text not in TEXT_MODES:
        raise DataError(f"{dataset}: text must be one of {', '.join(TEXT_MODES)}, got {text!r}")


def locate(data_dir: str | Path | None = None) -> Path:
    """The ``data.noun`` file to read (DataError naming the searched paths if there is none)."""
    return find_data_file("wordnet", [FILENAME], DEBIAN_DIRS, DEBIAN_PACKAGE, None, data_dir=data_dir)


def is_available(data_dir: str | Path | None = None) -> tuple[bool, str]:
    """Whether ``data.noun`` is present, and where / what to install."""
    try:
        return True, f"found {locate(data_dir)}"
    except DataError as exc:
        return False, str(exc)


@dataclass
class NounRows:
    """The rows of ``wordnet-nouns`` with their two levels; the deep variant builds its third level on them.

    Row ``i`` is synset ``offsets[i]`` with text ``texts[i]`` and class ``fine[i]`` (an index into
    ``classes`` and ``class_names``); ``parent_of[c]`` is class ``c``'s index into ``coarse_names``.
    """

    synsets: dict[int, Synset]
    paths: dict[int, tuple[int, ...]]
    classes: list[tuple[int, int, list[int]]]  # (lexfile, ancestor, member offsets) per class
    class_names: list[str]
    coarse_names: list[str]
    parent_of: list[int]
    offsets: list[int]
    texts: list[str]
    fine: list[int]


def noun_rows(
    depth: int, min_class_size: int, max_per_class: int | None, seed: int, text: str,
    data_dir: str | Path | None, dataset: str = NAME,
) -> NounRows:
    """The synsets, texts and two-level labels of ``wordnet-nouns`` for these options (rows in class order)."""
    check_options(dataset, depth, min_class_size, max_per_class, text)
    path = locate(data_dir)
    synsets, paths = parse_data_noun(path), _paths_cached(*_cache_key(path))
    classes = _fine_classes(synsets, paths, depth, min_class_size)
    if not classes:
        raise DataError(f"{path}: no fine class at depth {depth} has >= {min_class_size} synsets; "
                        "lower depth or min_class_size")
    lexfiles = sorted({lexfile for lexfile, _, _ in classes})
    gen = torch.Generator().manual_seed(seed)
    kept, texts, fine = [], [], []
    for index, (_, _, offsets) in enumerate(classes):
        if max_per_class is not None and len(offsets) > max_per_class:
            keep = torch.randperm(len(offsets), generator=gen)[:max_per_class].sort().values
            offsets = [offsets[i] for i in keep.tolist()]
        for offset in offsets:
            synset = synsets[offset]
            texts.append(synset.gloss if text == "gloss" else f"{', '.join(synset.lemmas)}: {synset.gloss}")
            kept.append(offset)
            fine.append(index)
    names = unique_names(lemma_names(synsets, classes), [ancestor for _, ancestor, _ in classes])
    return NounRows(
        synsets=synsets, paths=paths, classes=classes, class_names=names,
        coarse_names=[lexname(lexfile) for lexfile in lexfiles],
        parent_of=[lexfiles.index(lexfile) for lexfile, _, _ in classes], offsets=kept, texts=texts, fine=fine,
    )


def split_dataset(
    name: str, texts: list[str], targets: dict[str, torch.Tensor], stratify: torch.Tensor, hierarchy: Hierarchy,
    test_fraction: float, val_fraction: float, seed: int,
) -> Dataset:
    """A text dataset split into seeded train / val / test parts stratified on ``stratify`` (N,)."""
    everything = LabeledSplit(texts, targets)
    train, val, test = fraction_split(stratify, test_fraction, val_fraction, seed, name)
    sizes = ", ".join(f"{hierarchy.num_classes(level)} {level}" for level in hierarchy.level_names)
    logger.info("%s: %s classes, %d synsets (%d train / %d val / %d test)",
                name, sizes, len(texts), len(train), len(val), len(test))
    return Dataset(
        name=name,
        modality="text",
        levels=[LabelLevel(level, hierarchy.classes[level]) for level in hierarchy.level_names],
        train=everything.subset(train),
        test=everything.subset(test),
        val=everything.subset(val) if len(val) else None,
        hierarchy=hierarchy,
    )


def load_wordnet_nouns(
    depth: int = 5,
    min_class_size: int = 50,
    max_per_class: int | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    text: str = "gloss",
    data_dir: str | Path | None = None,
) -> Dataset:
    """WordNet noun glosses with levels ``coarse`` (lexicographer file) and ``fine`` (ancestor at ``depth``).

    ``max_per_class`` keeps a seeded random subset of larger classes; the test / validation parts are
    stratified by fine class and seeded; ``text="lemma+gloss"`` prefixes each gloss with its lemmas.
    """
    rows = noun_rows(depth, min_class_size, max_per_class, seed, text, data_dir)
    fine = torch.tensor(rows.fine)
    targets = {"coarse": torch.tensor(rows.parent_of)[fine], "fine": fine}
    hierarchy = Hierarchy.from_index(rows.parent_of, rows.class_names, rows.coarse_names, ("coarse", "fine"))
    return split_dataset(NAME, rows.texts, targets, fine, hierarchy, test_fraction, val_fraction, seed)
