"""The smoke test's comparison with training's predictions (issue 9, item 6), as a pure function."""

from __future__ import annotations

import pytest

from tasks.release.container import SmokeTestError, compare_predictions

EXPECTED = [0.1, 0.5, 0.9]


@pytest.mark.parametrize(
    ("answers", "worst"),
    [
        ({"/predict/batch": [0.1, 0.5, 0.9]}, 0.0),
        ({"/invocations": [0.1 + 1e-7, 0.5, 0.9 - 5e-7], "/predict": [0.1]}, 5e-7),
        ({"/predict/batch": [0.1, 0.5, 0.9 + 9e-7]}, 9e-7),  # just inside the tolerance
    ],
)
def test_answers_within_the_tolerance_pass(answers, worst) -> None:
    assert compare_predictions(answers, EXPECTED) == pytest.approx(worst, abs=1e-12)


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({"/predict/batch": [0.1, 0.5, 0.91]}, r"/predict/batch record 2: probability 0.91 differs from training's 0.9 by 1.00e-02"),
        ({"/predict": [0.1], "/invocations": [0.1, 0.6, 0.9]}, r"/invocations record 1: probability 0.6"),
        ({"/invocations": [0.1, float("nan"), 0.9]}, r"/invocations record 1: probability nan"),
        ({"/invocations": [0.1, None, 0.9]}, r"/invocations record 1: probability None is not a number"),
    ],
)  # fmt: skip
def test_a_wrong_answer_names_the_endpoint_the_record_and_the_difference(answers, message) -> None:
    with pytest.raises(SmokeTestError, match=message) as err:
        compare_predictions(answers, EXPECTED)
    assert str(err.value).startswith("smoke-test failed: ")


def test_a_stricter_tolerance() -> None:
    with pytest.raises(SmokeTestError, match="> 1e-09"):
        compare_predictions({"/predict": [0.1 + 1e-8]}, EXPECTED, tolerance=1e-9)
