"""A trained model ready for inference: the encoder, its projection heads (and classifiers), the names
of the levels and classes, and the config it was trained with.

Get one with :func:`mlcl.load_run` from a run folder or an exported one (:mod:`mlcl.train.export`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlcl.data.types import LabelLevel
from mlcl.errors import MlclError
from mlcl.models.model import ModelOutput, ModelSpec, MultiLevelModel
from mlcl.train.config import Config
from mlcl.train.data_setup import frozen_text_embedder, uses_frozen_text_encoder
from mlcl.train.run import Run, model_spec
from mlcl.user_input import did_you_mean

ENCODER = "encoder"


class TrainedModel(nn.Module):
    """An mlcl model in eval mode. ``embed(inputs, head)`` gives the encoder's features (``head="encoder"``,
    what probes and kNN use) or one projection head's L2-normalised embeddings.

    Inputs are what the run trained on: images ``(N, C, H, W)`` in [0, 1], feature vectors ``(N, F)``,
    or a list of texts (a frozen text encoder embeds them first, as in training).
    """

    def __init__(self, model: MultiLevelModel, spec: ModelSpec, config: Config, levels: Sequence[LabelLevel],
                 head_levels: dict[str, str | None]) -> None:
        super().__init__()
        self.model = model.eval()
        self.spec = spec
        self.config = config
        self.levels = list(levels)
        self.head_levels = dict(head_levels)  # head name -> the level whose labels were its positives (None: instance)
        self._text_embedder = None

    @classmethod
    def from_run(cls, run: Run) -> TrainedModel:
        """The model of a built or loaded :class:`~mlcl.train.run.Run`, as it is loaded."""
        heads = {h.name: (h.level.name if h.level is not None else None) for h in run.heads}
        return cls(run.model, model_spec(run.config, run.dataset, run.objective), run.config, run.dataset.levels, heads)

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def projector(self) -> nn.Module | None:
        return self.model.projector

    @property
    def classifiers(self) -> nn.ModuleDict:
        return self.model.classifiers

    @property
    def head_names(self) -> list[str]:
        return list(self.spec.head_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, x: torch.Tensor | list[str]) -> ModelOutput:
        return self.model(x)

    def _model_inputs(self, inputs: torch.Tensor | list[str]) -> torch.Tensor | list[str]:
        """Texts through the frozen sentence encoder when the run trained on its embeddings."""
        if isinstance(inputs, list) and uses_frozen_text_encoder(self.config):
            if self._text_embedder is None:
                self._text_embedder = frozen_text_embedder(self.config.model, progress=False)
            return self._text_embedder(inputs)
        return inputs

    @torch.no_grad()
    def embed(self, inputs: torch.Tensor | list[str], head: str = ENCODER, batch_size: int = 512) -> torch.Tensor:
        """``(N, D)`` float32 on the CPU: encoder features, or ``head``'s normalised projections."""
        if head != ENCODER and head not in self.head_names:
            raise MlclError(f"{head!r} is not a head of this model{did_you_mean(head, self.head_names)}; "
                            f"heads: {ENCODER}, {', '.join(self.head_names)}")
        inputs = self._model_inputs(inputs)
        index = self.head_names.index(head) if head != ENCODER else None
        device, out = self.device, []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            chunk = chunk.to(device) if isinstance(chunk, torch.Tensor) else chunk
            if index is None:
                out.append(self.model.encode(chunk).float().cpu())
            else:
                projections = self.model(chunk).projections[index]
                out.append(nn.functional.normalize(projections.float(), dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)
