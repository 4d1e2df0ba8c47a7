"""Batched image augmentation, views and token masking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlcl.data.augment import ImageAugment, make_views
from mlcl.errors import ConfigError
from mlcl.models.text import mask_tokens


def _images(batch: int = 16, channels: int = 2, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_identity_when_everything_is_off() -> None:
    x = _images()
    augment = ImageAugment(crop_padding=0, hflip=False, erase_prob=0.0)
    assert torch.equal(augment(x, _seeded(0)), x)


def test_translate_and_flip_match_a_per_sample_reference() -> None:
    x = _images(batch=64)
    augment = ImageAugment(crop_padding=3, hflip=True, erase_prob=0.0)
    params = augment.sample(tuple(x.shape), _seeded(1))
    got = augment.apply(x, params)
    padded = F.pad(x, (3, 3, 3, 3))
    for b in range(x.shape[0]):
        top, left = params.offsets[b].tolist()
        expected = padded[b, :, top : top + 12, left : left + 12]
        if params.flip[b]:
            expected = expected.flip(-1)
        assert torch.equal(got[b], expected), b
    # the random choices really vary over the batch
    assert 0 < params.flip.sum() < 64
    assert params.offsets.min() == 0 and params.offsets.max() == 6
    assert len(set(map(tuple, params.offsets.tolist()))) > 10


def test_erasing_matches_its_boxes() -> None:
    x = _images(batch=64) + 0.5  # no zero pixels before erasing
    augment = ImageAugment(crop_padding=0, hflip=False, erase_prob=0.5)
    params = augment.sample(tuple(x.shape), _seeded(2))
    got = augment.apply(x, params)
    for b in range(x.shape[0]):
        expected = x[b].clone()
        if params.erase[b]:
            top, left, height, width = params.boxes[b].tolist()
            assert height >= 1 and width >= 1 and top + height <= 12 and left + width <= 12
            expected[:, top : top + height, left : left + width] = 0.0
        assert torch.equal(got[b], expected), b
    assert 10 < params.erase.sum() < 54


def test_same_seed_same_views_other_seed_other_views() -> None:
    x = _images()
    augment = ImageAugment(crop_padding=4, erase_prob=0.5, noise_std=0.05, brightness=0.4, contrast=0.4)
    first = augment(x, _seeded(3))
    assert torch.equal(first, augment(x, _seeded(3)))
    assert not torch.equal(first, augment(x, _seeded(4)))


def test_values_stay_in_unit_range_and_shape_is_kept() -> None:
    x = _images(batch=32)
    augment = ImageAugment(crop_padding=2, erase_prob=0.5, noise_std=0.3, brightness=0.8, contrast=0.8)
    out = augment(x, _seeded(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_brightness_and_contrast_factors() -> None:
    x = _images(batch=8)
    augment = ImageAugment(crop_padding=0, hflip=False, erase_prob=0.0, brightness=0.5, contrast=0.5)
    params = augment.sample(tuple(x.shape), _seeded(6))
    assert params.brightness.min() >= 0.5 and params.brightness.max() <= 1.5
    expected = (x * params.brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = expected.mean(dim=(1, 2, 3), keepdim=True)
    expected = ((expected - mean) * params.contrast.view(-1, 1, 1, 1) + mean).clamp(0, 1)
    torch.testing.assert_close(augment.apply(x, params), expected)


def test_make_views_shape_and_independence() -> None:
    x = _images(batch=8)
    views = make_views(x, 3, ImageAugment(crop_padding=4), _seeded(7))
    assert views.shape == (8, 3, 2, 12, 12)
    assert not torch.equal(views[:, 0], views[:, 1])
    identity = make_views(x, 2, ImageAugment(crop_padding=0, hflip=False, erase_prob=0.0))
    assert torch.equal(identity[:, 0], x) and torch.equal(identity[:, 1], x)


def test_augment_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="crop_padding"):
        ImageAugment(crop_padding=-1)
    with pytest.raises(ConfigError, match="erase_prob"):
        ImageAugment(erase_prob=1.5)
    with pytest.raises(ConfigError, match="noise_std"):
        ImageAugment(noise_std=-0.1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ImageAugment()(torch.rand(3, 12, 12))
    with pytest.raises(ConfigError, match="n_views"):
        make_views(_images(), 0, ImageAugment())


@pytest.mark.parametrize("rate", [0.0, 0.15, 0.5, 1.0])
def test_mask_tokens_rate(rate: float) -> None:
    ids = torch.randint(1000, 2000, (64, 128), generator=_seeded(8))
    masked = mask_tokens(ids, rate, mask_id=103, generator=_seeded(9))
    hit = masked == 103
    assert abs(hit.float().mean().item() - rate) < 0.02  # 3.6 sigma at rate 0.5
    assert torch.equal(masked[~hit], ids[~hit])


def test_mask_tokens_respects_maskable_and_seed() -> None:
    ids = torch.randint(1000, 2000, (8, 32), generator=_seeded(10))
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, 1:20] = True
    masked = mask_tokens(ids, 1.0, 103, _seeded(11), maskable)
    assert (masked[:, 1:20] == 103).all() and torch.equal(masked[~maskable], ids[~maskable])
    assert torch.equal(mask_tokens(ids, 0.3, 103, _seeded(12)), mask_tokens(ids, 0.3, 103, _seeded(12)))
    with pytest.raises(ValueError, match="1.5"):
        mask_tokens(ids, 1.5, 103)
