"""metrics.py: the scores every report uses, the fitted temperature, the calibration error and the prior the
probabilities refer to."""

import numpy as np
import pytest
import torch

from metrics import (ECE_BINS, TEMPERATURE_RANGE, at_bound, bayes_posterior, expected_calibration_error,
                     fit_calibration, log_loss, prior_weights, reliability, roc_auc, scores, sigmoid)


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


def miscalibrated(temperature: float, n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits `temperature` times the true log-odds, and labels drawn from the true probabilities."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 3, n)
    labels = (rng.random(n) < sigmoid(true_logits)).astype(float)
    return true_logits * temperature, labels


@pytest.mark.parametrize("true_t", [0.3, 1.0, 2.5])
def test_a_fitted_temperature_recovers_the_true_one(true_t):
    logits, labels = miscalibrated(true_t)
    assert fit_calibration(logits, labels)[0] == pytest.approx(true_t, rel=0.05)


def test_calibration_repairs_squeezed_probabilities_without_moving_a_prediction():
    logits, labels = miscalibrated(0.4)  # squeezed toward 0.5, as label smoothing does
    t = fit_calibration(logits, labels)[0]
    before, after = sigmoid(logits), sigmoid(logits, t)
    assert ((before > 0.5) == (after > 0.5)).all()
    assert expected_calibration_error(after, labels) < 0.02 < expected_calibration_error(before, labels)
    assert log_loss(after, labels) < log_loss(before, labels)


def test_the_ece_of_a_perfectly_calibrated_sampler_is_near_zero():
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = (rng.random(len(p)) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.005
    assert expected_calibration_error(np.full(len(p), 0.5), y) < 0.005  # honest about knowing nothing
    assert expected_calibration_error(np.clip(p + 0.1, 0, 1), y) == pytest.approx(0.1, abs=0.02)


def test_reliability_bins_and_the_ece_by_hand():
    p = np.array([0.05, 0.05, 0.95, 0.95, 1.0])
    y = np.array([0, 1, 1, 1, 1])
    table = reliability(p, y)
    assert len(table["share"]) == ECE_BINS and table["share"].sum() == pytest.approx(1)
    assert table["frequency"][0] == 0.5 and table["frequency"][-1] == 1.0  # p = 1 lands in the last bin
    assert np.isnan(table["frequency"][7])
    expected = 0.4 * abs(0.5 - 0.05) + 0.6 * abs(1 - (0.95 + 0.95 + 1.0) / 3)
    assert expected_calibration_error(p, y) == pytest.approx(expected)


def test_weights_turn_a_split_into_the_reference_mix():
    y = np.array([1] * 9 + [0] * 5)
    w = prior_weights(y, 0.5)
    assert np.sum(w * y) == pytest.approx(np.sum(w * (1 - y))) and w.mean() == pytest.approx(1)
    assert (prior_weights(y, 9 / 14) == 1).all() and (prior_weights(np.ones(3), 0.5) == 1).all()
    # a 9:5 split reweighted to 50/50 calibrates like a 50/50 split: the fitted temperature is the same
    logits, labels = miscalibrated(0.5, seed=2)
    zeros = np.flatnonzero(labels == 0)
    keep = np.concatenate([np.flatnonzero(labels == 1), zeros[: int(len(zeros) * 5 / 9)]])
    fitted = fit_calibration(logits[keep], labels[keep], prior_weights(labels[keep], 0.5))[0]
    assert fitted == pytest.approx(0.5, rel=0.06)


def test_temperature_stays_in_range_for_useless_or_separable_logits():
    y = np.array([0.0, 1.0] * 50)
    assert fit_calibration(np.zeros(100), y)[0] == TEMPERATURE_RANGE[1]
    assert fit_calibration(-(2 * y - 1), y)[0] == TEMPERATURE_RANGE[1]  # anti-informative: never flips a sign
    assert fit_calibration(2 * y - 1, y)[0] == TEMPERATURE_RANGE[0]  # separable: as sharp as allowed


def test_the_bayes_posterior_refers_to_a_prior():
    llr = np.array([-2.0, 0.0, 3.0])
    assert bayes_posterior(llr, 0.5) == pytest.approx(sigmoid(llr))
    assert bayes_posterior(np.zeros(1), 0.8) == pytest.approx([0.8])  # no evidence: the prior


def test_an_offset_logit_gets_its_threshold_back_where_an_offset_is_fitted():
    """Logits that rank the states perfectly but are all shifted by +3 (as dropout's train/eval variance shift
    does to a model that reads how much variance an image has): the temperature alone keeps every 0/1
    prediction; the fitted shift c recovers the threshold, T and c the true calibration."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4_000).astype(float)
    true = rng.normal(2.0 * (2 * labels - 1), 1.0)  # well calibrated up to a scale
    logits = 0.5 * true + 3.0
    t_only, c_none = fit_calibration(logits, labels)
    assert c_none == 0.0 and np.mean((logits > 0) == labels) < 0.6
    t, c = fit_calibration(logits, labels, offset=True)
    assert np.mean((logits + c > 0) == labels) > 0.97
    assert c == pytest.approx(-3.0, abs=0.1)


def test_a_temperature_at_a_bound_is_said_to_calibrate_nothing():
    y = np.array([0.0, 1.0] * 50)
    separable, useless = fit_calibration(10 * (2 * y - 1), y)[0], fit_calibration(np.zeros(100), y)[0]
    assert "not calibrated" in at_bound(separable) and "0.5" in at_bound(useless)
    assert at_bound(fit_calibration(*miscalibrated(0.4))[0]) == ""
