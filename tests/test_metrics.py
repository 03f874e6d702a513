"""metrics.py: the scores every report uses."""
from __future__ import annotations

import pytest
import torch

from metrics import roc_auc, scores


def test_roc_auc_matches_pairwise_definition_with_ties():
    p = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])
    y = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    pairs = [(float(p[i] > p[j]) + 0.5 * float(p[i] == p[j])) for i in range(6) for j in range(6)
             if y[i] == 1 and y[j] == 0]
    assert roc_auc(p, y) == pytest.approx(sum(pairs) / len(pairs))


def test_scores_of_perfect_and_inverted_predictions():
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    perfect, inverted = scores(y * 0.98 + 0.01, y), scores((1 - y) * 0.98 + 0.01, y)
    assert perfect["acc"] == 1.0 and perfect["auc"] == 1.0 and perfect["loss"] == pytest.approx(0.01005, abs=1e-4)
    assert inverted["acc"] == 0.0 and inverted["auc"] == 0.0 and inverted["loss"] > 4
