"""The sharing-plan language (mtbert/model/plan.py): short strings and mappings, resolved against the
encoder's layer count, and the errors bad plans give."""

import dataclasses

import pytest

from mtbert.model.plan import Adapter, Part, Relational, SharingPlan, SharingPlanError, resolve_plan

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
    ("frozen+lora+pals", "", "has two adapter segments; a plan takes one"),
    ("frozen+lora[r=0]", "", "r must be at least 1, got 0"),
    ("frozen+lora[r=x]", "", "'lora\\[r=x\\]': r='x' is not a number"),
    ("frozen+lora[r=2,r=4]", "", "r is given twice"),
    ("frozen+lora[rank=4]", "", "unknown adapter setting 'rank'; lora takes r, alpha, dropout, targets"),
    ("frozen+lora[size=96]", "", "size is a pals setting; lora takes r, alpha, dropout, targets"),
    ("frozen+pals[r=8]", "", "r is a lora setting; pals takes size, heads"),
    ("frozen+lora[dropout=1]", "", "dropout must be in \\[0, 1\\), got 1.0"),
    ("frozen+lora[alpha=0]", "", "alpha must be above 0"),
    ("frozen+lora[targets=querry]", "", "unknown LoRA target 'querry'; did you mean 'query'"),
    ("frozen+pals[size=100]", "", "pals size 100 is not a multiple of its 6 heads"),
    ("frozen+lora[sst+qoura]", "", "names 'qoura', which is not a task of this recipe; did you mean 'quora'"),
    ("frozen+lora[sst,sst+sts]", "", "task 'sst' is in two groups"),
    ({"layers": [{"range": "all", "mode": "frozen"}], "adapter": {"type": "prefix"}}, "adapter.type",
     "expected one of lora, pals, got 'prefix'"),
    ({"layers": [{"range": "all", "mode": "frozen"}], "adapter": {"type": "lora", "r": 2.5}}, "adapter.r",
     "r must be a whole number, got 2.5"),
    ({"layers": [{"range": "all", "mode": "frozen"}], "adapter": {"type": "lora", "targets": []}}, "adapter.targets",
     "expected a list of targets"),
    ({"layers": [{"range": "all", "mode": "frozen"}], "adapter": {"type": "pals", "groups": [["sst", "x"]]}},
     "adapter.groups", "names 'x', which is not a task"),
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


def test_adapters_short_and_structured():
    plan = resolve_plan("F1-S2+lora[r=16,alpha=32,dropout=0.1,targets=ffn/query,sts+quora]", 3, TASKS)
    assert plan.layers == (Part("frozen"), Part("shared"), Part("shared"))
    # groups as written, every other task alone; targets in one order whatever the order written
    assert plan.adapter == Adapter("lora", (("sst",), ("quora", "sts")), r=16, alpha=32.0, dropout=0.1,
                                   targets=("query", "ffn_in", "ffn_out"))
    assert [plan.adapter_owner(t) for t in TASKS] == ["sst", "quora+sts", "quora+sts"]
    structured = {"layers": [{"range": 0, "mode": "frozen"}, {"range": "1-2", "mode": "shared"}],
                  "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.1, "targets": ["query", "ffn"],
                              "groups": [["quora", "sts"]], "size": None, "heads": None}}  # null: the default
    assert resolve_plan(structured, 3, TASKS) == dataclasses.replace(plan, text="")
    defaults = resolve_plan("frozen+lora", 3, TASKS).adapter
    assert (defaults.r, defaults.alpha, defaults.dropout, defaults.targets) == (8, 16.0, 0.0, ("query", "value"))
    assert resolve_plan("shared+R1[quora+sts]+pals", 3, TASKS).relational  # relational layers and an adapter
    assert "lora r=16 alpha=32 dropout=0.1 on query,ffn_in,ffn_out [sst] [quora+sts]" in plan.describe()
    assert SharingPlan.from_dict(plan.to_dict()) == plan
    assert SharingPlan.from_dict({k: v for k, v in plan.to_dict().items() if k != "adapter"}).adapter is None


def test_pals_width_scales_with_the_hidden_size():
    pals = resolve_plan("frozen+pals", 3, TASKS).adapter
    assert (pals.width(768), pals.width(384), pals.heads) == (204, 102, 6)  # BERT-base as in the paper's code; MiniLM
    assert pals.width(32) == 12  # 8.5 rounded up to a multiple of the 6 heads
    assert resolve_plan("frozen+pals[size=48,heads=4]", 3, TASKS).adapter.width(384) == 48
