import io
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.config import PromptConfig, TaskConfig, load_recipe
from mtbert.data.encoding import cache_dir, encoding_mode, tokenize_split
from mtbert.data.prompts import BUILTIN_PROMPTS, PromptTemplate, render
from mtbert.data.reading import SplitData, read_split
from mtbert.errors import MtbertError
from mtbert.tasks import BUILTIN_TASKS, resolve_task, resolve_tasks

from helpers import write_recipe

RECIPE = """\
name: t
model:
  init: random
  tokenizer: tok
tasks:
{tasks}
"""


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A tokenisation cache of this test's own, so cache files can be counted."""
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "mtbert-cache"))


def recipe_file(tmp_path, tasks: str):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(tasks=tasks))
    return path


def test_builtin_templates_render_the_documented_text():
    assert render(BUILTIN_PROMPTS["sst"], "a moving film") == ("Is this review positive or negative?",
                                                               "a moving film")
    assert render(BUILTIN_PROMPTS["quora"], "how do i cook?", "what is cooking?") == (
        "Does the first question paraphrase the second?",
        "First sentence: how do i cook? Second sentence: what is cooking?")
    assert render(BUILTIN_PROMPTS["sts"], "a man runs", "a dog runs") == (
        "Is the first sentence semantically equivalent to the second?",
        "First sentence: a man runs Second sentence: a dog runs")
    # braces inside the example's text are data, not placeholders
    assert render(BUILTIN_PROMPTS["sst"], "{b} {x}")[1] == "{b} {x}"


def documented_templates() -> dict[str, tuple[str, str]]:
    """task -> (question, context) from the docs' table of built-in templates (Tasks and data)."""
    page = (Path(__file__).parents[2] / "docs" / "tasks.md").read_text(encoding="utf-8")
    table = page.split("The built-in templates (", 1)[1].split("\n\n")[1]  # the paragraph after the line
    rows = re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| (.+?) \| `(.+?)` \|$", table, flags=re.MULTILINE)
    return {name: (question, context) for names, question, context in rows for name in re.findall(r"`(\w+)`", names)}


def test_every_builtin_template_renders_the_text_the_docs_document():
    documented = documented_templates()
    assert set(documented) == set(BUILTIN_PROMPTS)  # no built-in left undocumented, none documented in vain
    for name, (question, context) in documented.items():
        is_pair = "{b}" in context
        a, b = "the first one .", "the second one ?" if is_pair else ""
        expected = (question, context.replace("{a}", a).replace("{b}", b))
        assert render(BUILTIN_PROMPTS[name], a, b) == expected, name
        assert is_pair == (len(BUILTIN_TASKS[name]["text_columns"]) == 2), name


@pytest.mark.parametrize("prompt, message", [
    ("bultin", "tasks.sst.prompt: expected `builtin`"),
    ({"question": "q", "context": "{a} {sentence}"}, "tasks.sst.prompt.context: unknown placeholder '{sentence}'"),
])
def test_bad_template_is_one_line_from_the_cli(tmp_path, tokenizer_dir, prompt, message):
    recipe = write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {"prompt": prompt}}, train={"max_steps": 1})
    for command in ("validate", "train"):
        result = CliRunner().invoke(app, [command, str(recipe)])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert not (tmp_path / "ckpt").exists()  # nothing trained, nothing written


def test_every_builtin_template_fits_its_task():
    for name in BUILTIN_PROMPTS:
        assert name in BUILTIN_TASKS
        task = resolve_task(name, TaskConfig(prompt="builtin"))
        assert task.prompt == BUILTIN_PROMPTS[name] and encoding_mode(task) == "prompt"
    assert resolve_task("sst", TaskConfig()).prompt is None


def test_custom_template_in_a_recipe(tmp_path):
    path = recipe_file(tmp_path, "  quora:\n    prompt:\n      question: Same meaning?\n"
                                 "      context: 'A: {a} B: {b}'\n  sst: {prompt: builtin}\n")
    recipe = load_recipe(path)
    assert recipe.tasks["quora"].prompt == PromptConfig(question="Same meaning?", context="A: {a} B: {b}")
    assert recipe.tasks["sst"].prompt == "builtin"
    tasks = resolve_tasks(recipe)
    assert tasks["quora"].prompt == PromptTemplate("Same meaning?", "A: {a} B: {b}")
    assert render(tasks["quora"].prompt, "x", "y") == ("Same meaning?", "A: x B: y")
    assert tasks["sst"].prompt == BUILTIN_PROMPTS["sst"]


def test_incomplete_custom_prompt_names_the_missing_key(tmp_path):
    with pytest.raises(MtbertError, match=r"r\.yaml:6: tasks\.sst\.prompt: missing required key\(s\): context"):
        load_recipe(recipe_file(tmp_path, "  sst: {prompt: {question: q}}"))
    with pytest.raises(MtbertError, match=r"tasks\.sst\.prompt: expected a string or a mapping or null"):
        load_recipe(recipe_file(tmp_path, "  sst: {prompt: [q]}"))


@pytest.mark.parametrize("tasks, message", [
    ("  quora: {prompt: {question: q, context: '{a} {c}'}}",
     r"tasks\.quora\.prompt\.context: unknown placeholder '\{c\}'"),
    ("  sst: {prompt: {question: q, context: '{a} and {b}'}}",
     r"tasks\.sst\.prompt\.context: unknown placeholder '\{b\}'; a single-sentence task has only \{a\}"),
    ("  quora: {prompt: {question: q, context: 'only {a}'}}", r"tasks\.quora\.prompt\.context: .*never uses \{b\}"),
    ("  mine: {format: csv, train_file: t.csv, dev_file: d.csv, text_columns: [s], label_column: y, "
     "kind: binary, prompt: builtin}", r"tasks\.mine\.prompt: task mine has no built-in prompt"),
    ("  sst: {prompt: bultin}", r"tasks\.sst\.prompt: expected `builtin`"),
    ("  quora: {prompt: builtin, pair_encoding: siamese}", r"tasks\.quora\.prompt: .*cannot use pair_encoding"),
])
def test_bad_prompts_are_clear_errors(tmp_path, tasks, message):
    recipe = load_recipe(recipe_file(tmp_path, tasks))
    with pytest.raises(MtbertError, match=message):
        resolve_tasks(recipe)


def test_prompt_mode_encodes_question_then_context(cs224n_dir, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    task = resolve_task("sst", TaskConfig(prompt=PromptConfig(question="is the film good?", context="{a}")))
    data = read_split(task, "dev", cs224n_dir)
    enc = tokenize_split(data, task, tok, 64)
    question = tok("is the film good?", add_special_tokens=False)["input_ids"]
    for row, text in zip(enc.select(range(3)), data.dataset["text_a"]):
        context = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in question + context
        assert row["input_ids"] == [tok.cls_token_id, *question, tok.sep_token_id, *context, tok.sep_token_id]
        assert row["token_type_ids"] == [0] * (len(question) + 2) + [1] * (len(context) + 1)

    pair = resolve_task("quora", TaskConfig(prompt=PromptConfig(question="what?", context="{a} , {b}")))
    pair_data = read_split(pair, "dev", cs224n_dir)
    row = tokenize_split(pair_data, pair, tok, 64)[0]
    a, b = pair_data.dataset[0]["text_a"], pair_data.dataset[0]["text_b"]
    assert row["input_ids"] == tok("what?", f"{a} , {b}")["input_ids"]
    assert row["input_ids"].count(tok.sep_token_id) == 2 and row["token_type_ids"][-1] == 1


def test_cache_key_follows_the_template(cs224n_dir, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    first = resolve_task("sst", TaskConfig(prompt=PromptConfig(question="is it good?", context="{a}")))
    second = resolve_task("sst", TaskConfig(prompt=PromptConfig(question="is it bad?", context="{a}")))
    data = read_split(first, "dev", cs224n_dir)
    one = tokenize_split(data, first, tok, 32)
    assert len(list((cache_dir() / "tokenized").glob("sst-*"))) == 1
    assert tokenize_split(data, first, tok, 32)["input_ids"] == one["input_ids"]  # same template: reused
    assert len(list((cache_dir() / "tokenized").glob("sst-*"))) == 1
    two = tokenize_split(data, second, tok, 32)
    assert len(list((cache_dir() / "tokenized").glob("sst-*"))) == 2
    assert one["input_ids"] != two["input_ids"]
    plain = tokenize_split(data, resolve_task("sst", TaskConfig()), tok, 32)
    assert len(plain["input_ids"][0]) < len(one["input_ids"][0])


def test_trained_model_keeps_and_applies_its_prompt(tmp_path, tokenizer_dir):
    from mtbert.commands.predict import parse_lines, predict_lines
    from mtbert.exported import load_model
    from mtbert.training.loop import train
    from mtbert.training.setup import head_spec

    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {"prompt": "builtin"}},
                                      train={"max_steps": 4}))
    assert head_spec(resolve_tasks(recipe)["sst"]).encoding == "cross"
    train(recipe)
    loaded = load_model(tmp_path / "ckpt")
    task = loaded.tasks["sst"]
    assert task.prompt == BUILTIN_PROMPTS["sst"]
    # the stored recipe spells the template out, so a later edit of the built-in cannot change this model
    stored = loaded.recipe.tasks["sst"].prompt
    assert stored != "builtin" and stored.question == BUILTIN_PROMPTS["sst"].question
    # what predict_lines does: a SplitData of the lines, tokenised with the loaded task
    split = SplitData(parse_lines(["the film was great"], task, "<test>"), "<test>", labelled=False)
    row = tokenize_split(split, task, loaded.tokenizer, loaded.recipe.model.max_length, use_cache=False,
                         progress=False)[0]
    tok = loaded.tokenizer
    question = tok("Is this review positive or negative?", add_special_tokens=False)["input_ids"]
    context = tok("the film was great", add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == [tok.cls_token_id, *question, tok.sep_token_id, *context, tok.sep_token_id]
    out = io.StringIO()
    assert predict_lines(tmp_path / "ckpt", "sst", ["the film was great", "a dull plot"], "<test>", out) == 2
    assert len(out.getvalue().splitlines()) == 3
