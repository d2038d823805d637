"""mtbert/files.py: JSON every reader accepts, and scores read back from it."""

import json
import math

from mtbert.files import json_text, score


def test_non_finite_numbers_are_written_as_null_and_read_back_as_nan():
    text = json_text({"overall": math.nan, "sts": {"pearson": math.inf, "main": 0.5}, "curve": [1.0, -math.inf]})
    assert json.loads(text) == {"overall": None, "sts": {"pearson": None, "main": 0.5}, "curve": [1.0, None]}
    assert math.isnan(score(json.loads(text)["overall"])) and score(0.5) == 0.5
