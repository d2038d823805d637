"""The harness itself must be able to fail: a traceback, a success and a changed file are each caught."""

import pytest

from badinput import fails_cleanly


def test_a_missing_recipe_fails_cleanly(tmp_path):
    fails_cleanly(["train", tmp_path / "absent.yaml"], names=["absent.yaml"], watch=[tmp_path])


def test_the_harness_catches_success_and_unnamed_things(tmp_path):
    with pytest.raises(AssertionError, match="exit status"):
        fails_cleanly(["--version"], names=[])
    with pytest.raises(AssertionError, match="does not name"):
        fails_cleanly(["train", tmp_path / "absent.yaml"], names=["something-else"])
