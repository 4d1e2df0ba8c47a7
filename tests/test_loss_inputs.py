"""The loss API's unusual inputs: Python lists, scalar temperatures of every kind, label layouts, tiny
temperatures and non-finite projections. Each either works like its plain equivalent or is a ValueError
that names the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loss_reference import dense_from_labels, reference_loss

from mlcl import MultiLevelSupConLoss, SupConLoss
from mlcl.losses import check_finite

torch.manual_seed(0)
Z = torch.randn(1, 6, 2, 8, dtype=torch.float64)
LABELS = torch.tensor([[0], [1], [0], [2], [1], [0]])


def expected(temperature: float = 0.1) -> torch.Tensor:
    return reference_loss(Z, dense_from_labels(LABELS), [temperature], [1.0])[0]


@pytest.mark.parametrize("temperature", [torch.tensor(0.1), np.float32(0.1), np.float64(0.1), np.array([0.1]),
                                         torch.tensor([0.1], dtype=torch.float64)])
def test_scalar_temperatures_of_every_kind_give_the_loss(temperature):
    tolerance = 1e-6 if isinstance(temperature, np.float32) else 1e-10  # 0.1 rounded to float32
    assert torch.allclose(MultiLevelSupConLoss(temperature)(Z, LABELS), expected(), atol=tolerance)
    if np.ndim(temperature) == 0:  # SupConLoss takes one number
        assert torch.allclose(SupConLoss(temperature)(Z[0], LABELS[:, 0]), expected(), atol=tolerance)


def test_supcon_takes_labels_as_a_column():
    assert torch.allclose(SupConLoss(0.1)(Z[0], LABELS), expected())


@pytest.mark.parametrize("call, message", [
    (lambda: MultiLevelSupConLoss([0.1])(Z, LABELS.tolist()), "relation must be a torch.Tensor.*got list"),
    (lambda: SupConLoss(0.1)(Z[0], LABELS[:, 0].tolist()), "labels must be a torch.Tensor.*got list"),
    (lambda: MultiLevelSupConLoss([0.1])(Z, LABELS.float()), r"must be an integer tensor.*labels.long\(\)"),
    (lambda: SupConLoss(0.1)(Z[0], LABELS.float()), r"must be an integer tensor.*labels.long\(\)"),
    (lambda: SupConLoss(0.1)(Z[0], LABELS[:, 0].float()), r"must be an integer tensor.*labels.long\(\)"),
    (lambda: SupConLoss(0.1)(Z[0], torch.cat([LABELS, LABELS], 1)), "use MultiLevelSupConLoss"),
    (lambda: MultiLevelSupConLoss([0.1])(Z, LABELS, anchor_mask=[[True] * 6]), "anchor_mask must be a torch.Tensor"),
    (lambda: MultiLevelSupConLoss(torch.ones(1, 1)), "one value per head, got shape"),
    (lambda: MultiLevelSupConLoss("warm"), "a number or a sequence of numbers"),
])
def test_wrong_inputs_are_value_errors_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("temperature", [1e-39, 1e-45])
def test_temperatures_whose_inverse_overflows_float32_are_refused(temperature):
    with pytest.raises(ValueError, match="1/value must be a finite float32"):
        MultiLevelSupConLoss([temperature])


def test_the_smallest_accepted_temperature_gives_a_finite_loss():
    loss = MultiLevelSupConLoss([3e-39])(Z.float(), LABELS)
    assert torch.isfinite(loss)


def test_non_finite_projections_pass_through_and_the_opt_in_check_names_them():
    z = Z.clone()
    z[0, 3, 1, 5] = float("inf")
    assert not torch.isfinite(MultiLevelSupConLoss([0.1])(z, LABELS))  # documented: no check on the hot path
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(the first at index \(0, 3, 1, 5\): inf\)"):
        check_finite(z)
    check_finite(Z)  # a finite tensor passes
