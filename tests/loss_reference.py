"""Brute-force per-pair reference of the multi-level loss (docs/loss.md), written as literally as the formulas read."""

from __future__ import annotations

import torch


def dense_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B, H) labels -> (H, B, B) weights: same label, -1 nobody's positive."""
    per_head = labels.t()
    same = per_head.unsqueeze(2) == per_head.unsqueeze(1)
    return (same & (per_head >= 0).unsqueeze(2) & (per_head >= 0).unsqueeze(1)).double()


def reference_loss(z, pos, temperatures, weights, anchor_mask=None, labelled=None):
    """Loops over heads, anchors and pairs. ``labelled`` (H, B) marks samples allowed as anchors."""
    z = z.double()
    num_heads, batch, n_views, _ = z.shape
    total = torch.zeros((), dtype=torch.float64)
    per_head = []
    for h in range(num_heads):
        rows = torch.nn.functional.normalize(z[h], dim=-1).reshape(batch * n_views, -1)
        n = rows.shape[0]
        losses = []
        for i in range(n):
            bi = i // n_views
            if anchor_mask is not None and not anchor_mask[h, bi]:
                continue
            if labelled is not None and not labelled[h, bi]:
                continue
            logits = [rows[i] @ rows[j] / temperatures[h] for j in range(n)]
            log_norm = torch.logsumexp(torch.stack([logits[k] for k in range(n) if k != i]), 0)
            num, den = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
            for j in range(n):
                if j == i:
                    continue
                w = 1.0 if j // n_views == bi else float(pos[h, bi, j // n_views])
                num = num + w * (logits[j] - log_norm)
                den = den + w
            if den > 0:
                losses.append(-num / den)
        head = torch.stack(losses).mean() if losses else torch.zeros((), dtype=torch.float64)
        per_head.append(head)
        total = total + weights[h] * head
    return total, torch.stack(per_head)
