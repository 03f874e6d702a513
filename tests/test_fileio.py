"""fileio.py: what every written file shares (atomic writes are tested with the errors, in test_errors.py)."""
import math

from fileio import rounded


def test_scores_are_written_with_the_digits_they_have():
    noisy = float(__import__("numpy").float32(0.986))  # 0.9860000014305115: a float32 accuracy as a float
    assert rounded({"test_acc": noisy, "runs": [0.12345678912, 3], "n": 1000, "ok": True, "name": "x"}) == \
        {"test_acc": 0.986, "runs": [0.123457, 3], "n": 1000, "ok": True, "name": "x"}
    assert rounded(1.5e-9 + 1e-17) == 1.5e-9 and math.isnan(rounded(math.nan)) and rounded(math.inf) == math.inf
