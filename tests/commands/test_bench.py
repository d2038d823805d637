import json

import pytest
import torch
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands.bench import (
    GROUPED,
    Tally,
    build_side,
    collate_plan,
    format_report,
    padded_tokens,
    ratios,
    regroup,
    run_bench,
    training_plan,
)
from mtbert.commands.flops import encoder_forward_flops
from mtbert.config import load_recipe
from mtbert.data.streams import TaskStream
from mtbert.model.bert import BertConfig
from mtbert.training.setup import build_model, load_run_data

from helpers import write_recipe

ENCODER = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def batch(lengths, suffix="", pad_to=None):
    pad_to = pad_to or max(lengths)
    mask = torch.tensor([[1] * n + [0] * (pad_to - n) for n in lengths])
    return {f"input_ids{suffix}": mask * 7, f"attention_mask{suffix}": mask, f"token_type_ids{suffix}": 0 * mask}


def test_tally_counts_tokens_examples_and_flops():
    tally = Tally()
    tally.add_batch(batch([5, 3]), ENCODER, 3)  # 8 real tokens in a 2 x 5 batch
    pair = batch([4, 1]) | batch([2, 6], suffix="_b")  # siamese: 4 sequences, padded to 6 on both sides
    tally.add_batch(pair, ENCODER, 3)
    assert (tally.examples, tally.sequences, tally.real_tokens) == (4, 6, 8 + 13)
    assert tally.padded_tokens == 10 + 2 * 2 * 6
    assert tally.model_flops == 3 * encoder_forward_flops(ENCODER, [5, 3, 4, 1, 2, 6])
    tally.seconds, tally.steps = 2.0, 2
    figures = tally.figures(peak_flops_per_s=1e6)
    assert figures["real_tokens_per_s"] == 21 / 2 and figures["padded_tokens_per_s"] == 34 / 2
    assert figures["examples_per_s"] == 2 and figures["s_per_step"] == 1.0
    assert figures["padding_efficiency"] == pytest.approx(21 / 34)
    assert figures["mfu"] == pytest.approx(tally.model_flops / 2 / 1e6)


def test_padded_tokens_of_a_pair_use_the_longer_side():
    assert padded_tokens(batch([2, 2], pad_to=3) | batch([1, 1], suffix="_b", pad_to=5)) == 2 * 2 * 5


def test_ratios_are_mtbert_over_transformers_for_shared_numbers():
    assert ratios({"a": 4.0, "b": 1, "c": "x", "d": 2.0}, {"a": 2.0, "b": 4, "c": "y", "d": 0.0}) == {"a": 2.0,
                                                                                                     "b": 0.25}


@pytest.fixture
def recipe(tmp_path, tokenizer_dir):
    return load_recipe(write_recipe(tmp_path, tokenizer_dir, train={"batch_size": 8}))


def test_training_plan_is_what_the_plain_streams_hand_out(recipe):
    data = load_run_data(recipe)
    plan = training_plan(recipe, data, 7)
    assert [step[0][0] for step in plan] == ["sst", "quora", "sts", "sst", "quora", "sts", "sst"]
    stream = TaskStream(data.train["quora"], 8, seed=recipe.seed, stream_id=1, pad_id=0)
    assert [indices for step in plan for name, indices in step if name == "quora"] == \
        [stream.next_indices(), stream.next_indices()]


def test_regroup_keeps_examples_and_sizes_and_cuts_padding(recipe):
    data = load_run_data(recipe)
    plan = training_plan(recipe, data, 30)
    grouped = regroup(plan, data, pool_batches=64, seed=0)
    for name in ("sst", "quora", "sts"):
        before = [i for step in plan for n, ix in step if n == name for i in ix]
        after = [i for step in grouped for n, ix in step if n == name for i in ix]
        assert sorted(before) == sorted(after)
    assert [[(n, len(ix)) for n, ix in step] for step in plan] == [[(n, len(ix)) for n, ix in step]
                                                                   for step in grouped]
    padded = [sum(padded_tokens(b) for step in collate_plan(p, data, 0) for _, b in step) for p in (plan, grouped)]
    assert padded[1] < padded[0]


def test_both_sides_compute_the_same_outputs(recipe):
    data = load_run_data(recipe)
    model = build_model(recipe, data.tasks, data.tokenizer)
    state = model.state_dict()
    sides = {side: build_side(side, model.config, state, recipe).eval() for side in ("mtbert", "transformers")}
    assert sides["mtbert"].encoder.unpad  # the recipe's speed switches reach the mtbert side
    plan = collate_plan(training_plan(recipe, data, 3), data, 0)
    with torch.no_grad():
        for step in plan:  # sst (single), quora (cross), sts (siamese)
            for name, b in step:
                torch.testing.assert_close(sides["mtbert"](name, b), sides["transformers"](name, b),
                                           atol=1e-5, rtol=0)


def test_run_bench_reports_both_sides_ratios_and_identical_predictions(recipe):
    result = run_bench(recipe, steps=3, warmup=1, compare="transformers", predict_limit=20, memory=False,
                       say=lambda message: None)
    json.dumps(result)  # every figure is JSON-ready
    for phase in ("train", "predict"):
        ours, theirs, ratio = (result[phase][key] for key in ("mtbert", "transformers", "ratio"))
        assert ratio["real_tokens_per_s"] == pytest.approx(ours["real_tokens_per_s"] / theirs["real_tokens_per_s"])
        # The same examples on both sides: the same real tokens.
        assert ours["real_tokens"] == theirs["real_tokens"] and ours["examples"] == theirs["examples"]
        assert 0 < ours["mfu"] < 1 and ours["seconds"] > 0
    for phase in ("train", "predict"):  # the fair reference: exactly mtbert's batches, so the same padding
        ours, fair, ratio = (result[phase][key] for key in ("mtbert", GROUPED, "ratio_same_batches"))
        assert (fair["real_tokens"], fair["padded_tokens"], fair["steps"]) == \
            (ours["real_tokens"], ours["padded_tokens"], ours["steps"])
        assert ratio["examples_per_s"] == pytest.approx(ours["examples_per_s"] / fair["examples_per_s"])
    report = format_report(result)
    assert report.index("transformers, same batches") < report.index("transformers, plain loop")
    assert result["train"]["mtbert"]["steps"] == 3
    assert result["predict"]["mtbert"]["examples"] == 60  # 20 per task
    assert result["parity_max_abs_diff"] < 1e-5
    agreement = result["predict"]["agreement"]
    assert agreement["sst"]["labels_equal"] == 1.0 and agreement["quora"]["labels_equal"] == 1.0
    assert agreement["sts"]["max_abs_score_diff"] < 1e-4
    assert result["matmul_peak"]["used"]["flops_per_s"] > 0 and "spawn" in result["method"]


def test_bench_help_has_an_example_and_bad_compare_is_one_line():
    runner = CliRunner()
    help_text = runner.invoke(app, ["bench", "--help"]).output
    assert "Example: mtbert bench" in help_text and "--compare" in help_text
    result = runner.invoke(app, ["bench", "missing.yaml"])
    assert result.exit_code == 2 and "recipe file not found" in result.output


def test_unknown_comparison_is_refused(recipe):
    from mtbert.errors import MtbertError

    with pytest.raises(MtbertError, match="--compare"):
        run_bench(recipe, compare="tensorflow", memory=False, say=lambda m: None)


@pytest.mark.slow
@pytest.mark.extended
def test_bench_command_measures_memory_per_side_and_writes_json(tmp_path, tokenizer_dir):
    path = write_recipe(tmp_path, tokenizer_dir, train={"batch_size": 8})
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(path), "speed.length_pool=0", "--steps", "2", "--warmup", "1",
                                      "--compare", "transformers", "--predict-examples", "8", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "real tokens/s" in result.output and "peak RSS increase MiB" in result.output
    written = json.loads(out.read_text())
    for phase in ("train", "predict"):
        for side in ("mtbert", "transformers"):
            assert written[phase][side]["peak_rss_mib"] > written[phase][side]["peak_rss_increase_mib"] > 0
        assert "peak_rss_mib" in written[phase]["ratio"]
    assert written["settings"]["speed"]["length_pool"] == 0
    assert written["command"].startswith("mtbert bench")


def test_profile_writes_tables_and_splits_the_time(recipe, tmp_path):
    result = run_bench(recipe, steps=2, warmup=1, compare="transformers", predict_limit=8, memory=False,
                       profile=tmp_path / "prof", profile_steps=2, say=lambda message: None)
    for side in ("mtbert", "transformers"):
        assert (tmp_path / "prof" / f"{side}-train.txt").read_text().count("aten::") > 5
        assert (tmp_path / "prof" / f"{side}-train-trace.json").is_file()
        shares = result["train"][side]["profile"]["shares"]
        assert sum(shares.values()) == pytest.approx(1.0) and shares["matrix products"] > 0


@pytest.mark.slow
@pytest.mark.extended
def test_onnxruntime_comparison_predicts_the_same(tmp_path, tokenizer_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {}}, train={"batch_size": 8}))
    result = run_bench(recipe, steps=1, warmup=0, compare="onnxruntime", predict_limit=24, memory=False,
                       say=lambda message: None)
    json.dumps(result)
    assert set(result["train"]) == {"mtbert"}  # prediction only for ONNX Runtime
    for side in ("mtbert_onnx", "mtbert_onnx_int8", "transformers_onnx"):
        figures = result["predict"][side]
        assert figures["examples"] == 24 and figures["real_tokens"] == result["predict"]["mtbert"]["real_tokens"]
        assert result["predict"][f"ratio_{side}"]["examples_per_s"] > 0
    for side in ("mtbert_onnx", "transformers_onnx"):  # fp32: the same predictions
        agreed = result["predict"][f"agreement_{side}"]["sst"]
        assert agreed["labels_equal"] == 1.0 and agreed["max_abs_probability_diff"] < 1e-5
    assert 0 <= result["predict"]["agreement_mtbert_onnx_int8"]["sst"]["labels_equal"] <= 1
    # transformers' standard route: ONNX Runtime's optimizer fuses its attention
    assert result["onnx"]["transformers_fused_operators"]["sst"].get("Attention", 0) > 0
    assert set(result["predict"]["dev_scores"]["mtbert_onnx_int8"]["sst"]) >= {"main"}
    assert "mtbert ONNX int8" in format_report(result)
