"""`mtbert init` on files it cannot read a task from, or onto a file that exists: one line, nothing written."""

from __future__ import annotations

import pytest

from badinput import fails_cleanly

TRAIN = "id,a,b,c,label\n1,x y,u v,p q,0\n2,y z,v w,q r,1\n"
CASES = {
    "out_exists": (["--out", "{out}"], ["exists", "recipe.yaml"]),
    "three_text_columns": ([], ["--text", "a, b, c"]),
    "unknown_label_column": (["--text", "a", "--label", "stars"], ["'stars'", "train.csv"]),
    "one_label_value": (["--text", "a", "--train", "{one}", "--dev", "{one}"], ["1 distinct value"]),
    "binary_on_three_labels": (["--text", "a", "--kind", "binary", "--dev", "{three}"], ["--kind binary"]),
    "bad_kind": (["--kind", "ordinal"], ["--kind"]),
    "no_such_file": (["--train", "{missing}"], ["missing.csv"]),
    "unknown_extension": (["--train", "{xml}"], ["data.xml", "extension"]),
}


@pytest.mark.parametrize("case", CASES)
def test_init_refuses(tmp_path, case):
    (tmp_path / "train.csv").write_text(TRAIN)
    (tmp_path / "dev.csv").write_text(TRAIN)
    (tmp_path / "one.csv").write_text("id,a,b,c,label\n1,x,y,z,0\n")
    (tmp_path / "three.csv").write_text(TRAIN + "3,x,y,z,2\n")
    (tmp_path / "data.xml").write_text("<a/>")
    (tmp_path / "recipe.yaml").write_text("# mine\n")
    extra, names = CASES[case]
    places = {k: tmp_path / f for k, f in [("out", "recipe.yaml"), ("one", "one.csv"), ("three", "three.csv"),
                                           ("missing", "missing.csv"), ("xml", "data.xml")]}
    args = ["init", "--train", tmp_path / "train.csv", "--dev", tmp_path / "dev.csv", "--out", tmp_path / "new.yaml"]
    fails_cleanly([*args, *(a.format(**places) for a in extra)], names=names, watch=[tmp_path])
    assert not (tmp_path / "new.yaml").exists()
