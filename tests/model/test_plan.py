"""The sharing-plan language (mtbert/model/plan.py): short strings and mappings, resolved against the
encoder's layer count, and the errors bad plans give."""

import dataclasses

import pytest

from mtbert.model.plan import Part, Relational, SharingPlanError, resolve_plan

TASKS = ["sst", "quora", "sts"]


def test_short_forms():
    shared = resolve_plan("shared", 3, TASKS)
    assert shared.layers == (Part("shared"),) * 3 and shared.embeddings == Part("shared") and not shared.relational
    plan = resolve_plan("F1-S1-I1[sts+quora]", 3, TASKS)
    assert plan.embeddings == Part("frozen")  # as the bottom layer
    assert plan.layers == (Part("frozen"), Part("shared"), Part("individual", (("sst",), ("quora", "sts"))))
    assert resolve_plan("I3", 3, TASKS).layers[0].groups == (("sst",), ("quora",), ("sts",))
    assert resolve_plan("individual", 3, TASKS) == dataclasses.replace(resolve_plan("I3", 3, TASKS),
                                                                       text="individual")
    assert resolve_plan("EI[sst+sts]-S3", 3, TASKS).embeddings == Part("individual", (("sst", "sts"), ("quora",)))
    relational = resolve_plan("frozen+R2[sts+quora]", 3, TASKS).relational
    assert relational == (Relational(("quora", "sts"), 2, "copy_top"),)


def test_structured_plan_equals_its_short_string():
    structured = {"layers": [{"range": 0, "mode": "frozen"}, {"range": "1", "mode": "shared"},
                             {"range": "2-2", "mode": "individual", "groups": [["sts", "quora"]]}],
                  "relational": [{"tasks": ["quora", "sts"], "layers": 1}]}
    short = resolve_plan("F1-S1-I1[quora+sts]+R1[quora+sts]", 3, TASKS)
    assert resolve_plan(structured, 3, TASKS) == dataclasses.replace(short, text="")
    with_embeddings = resolve_plan({"embeddings": "shared", "layers": [{"range": "all", "mode": "frozen"}]}, 3, TASKS)
    assert with_embeddings.embeddings == Part("shared") and with_embeddings.layers == (Part("frozen"),) * 3


@pytest.mark.parametrize("plan,path,message", [
    ("S2", "", "the layer counts of 'S2' add up to 2, but the encoder has 3 layers"),
    ("F4-S6-I2", "", "add up to 12, but the encoder has 3"),
    ("S1-X2", "", "cannot read 'X2' in 'S1-X2'; expected shared | frozen | individual"),
    ("partly", "", "cannot read 'partly'; expected"),
    ("S0-S3", "", "'S0': a segment covers at least 1 layer"),
    ("S1-I2[sst+qoura]", "", "group \\[sst, qoura\\] names 'qoura', which is not a task of this recipe; "
                             "did you mean 'quora'\\? its tasks: sst, quora, sts"),
    ("S1-I2[sst,sst+sts]", "", "task 'sst' is in two groups"),
    ("S1-I2[sst+sst]", "", "task 'sst' is twice in one group"),
    ("S1-S2[sst]", "", "groups are only for mode individual, not shared"),
    ("shared+R1[quora,sts]", "", "a relational segment is owned by one task group"),
    ("shared+R1[quora]+R1[quora+sts]", "", "task 'quora' is in two relational groups"),
    ({"layers": [{"range": "0-3", "mode": "shared"}]}, "layers.0.range",
     "layer 3 is out of range: the encoder has 3 layers, 0-2"),
    ({"layers": [{"range": "0-1", "mode": "shared"}, {"range": "1-2", "mode": "frozen"}]}, "layers.1.range",
     "layers 1-2 overlap layers 0-1 \\(model.sharing.layers.0\\)"),
    ({"layers": [{"range": "all", "mode": "shared"}, {"range": 2, "mode": "frozen"}]}, "layers.1.range",
     "layer 2 overlaps all layers"),
    ({"layers": [{"range": 0, "mode": "shared"}, {"range": 2, "mode": "shared"}]}, "layers",
     "no mode for layer\\(s\\) 1: the ranges must cover every layer of the encoder \\(0-2\\) exactly once"),
    ({"layers": [{"range": "2-1", "mode": "shared"}]}, "layers.0.range", "range 2-1 runs backwards"),
    ({"layers": [{"range": "top", "mode": "shared"}]}, "layers.0.range", "expected a layer index"),
    ({"layers": [{"range": "all", "mode": "shared"}], "relational": [{"tasks": ["paraphrase"]}]},
     "relational.0.tasks", "names 'paraphrase', which is not a task"),
    ({"layers": [{"range": "all", "mode": "individual", "groups": [["sst"], ["quora", "sst"]]}]},
     "layers.0.groups", "task 'sst' is in two groups"),
    ({"layers": [{"range": "all", "mode": "individual", "groups": [["sts"], []]}]},
     "layers.0.groups", "group 1 \\[\\] must name at least one task"),
    ({"layers": []}, "layers", "a structured plan lists its layer ranges"),
    ({"layer": []}, "", "unknown key\\(s\\) layer"),
])
def test_bad_plans_are_named_errors(plan, path, message):
    with pytest.raises(SharingPlanError, match=message) as error:
        resolve_plan(plan, 3, TASKS)
    assert ".".join(error.value.path) == path
    assert str(error.value).startswith("model.sharing" + (f".{path}" if path else "") + ": ")


def test_a_task_may_not_take_a_copy_name():
    with pytest.raises(SharingPlanError, match="a task named 'shared' cannot own a copy"):
        resolve_plan("I2", 2, ["shared", "sst"])
    assert resolve_plan("S2", 2, ["shared", "sst"]).layers == (Part("shared"),) * 2  # fine while it owns none
    # 'a+b' alone and the group [a, b] would both be called a+b: one copy for two owners, silently.
    with pytest.raises(SharingPlanError, match="task 'a\\+b' owns a copy of encoder weights, so its name cannot"):
        resolve_plan({"layers": [{"range": "all", "mode": "individual", "groups": [["a", "b"]]}]}, 2, ["a", "b", "a+b"])
