"""`python -m mtbert.commands.counts`: a plan's parameter costs without training, as a run's parameters.json."""

import pytest

from mtbert.commands.counts import main, table

from helpers import write_recipe


def cells(line: str) -> list[str]:
    return [c.strip().strip("`") for c in line.strip("|").split("|")]


def test_rows_count_what_each_plan_trains_and_adds_per_task(tmp_path, tokenizer_dir, capsys):
    recipe = write_recipe(tmp_path, tokenizer_dir)  # H 32, FFN 64, 2 layers, 3 tasks
    main([str(recipe), "frozen", "frozen+lora[r=2,targets=query/ffn_in]", "individual"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| plan | parameters | trainable |")
    frozen, lora, individual = (cells(line) for line in lines[2:])
    number = lambda text: int(text.replace(",", ""))  # noqa: E731
    # By hand: r (in + out) per adapted projection, 2 layers, one adapter per task
    per_task = 2 * 2 * ((32 + 32) + (32 + 64))
    assert number(lora[2]) - number(frozen[2]) == 3 * per_task
    assert number(lora[4]) - number(frozen[4]) == per_task  # the heads are the rest of what a task adds
    assert float(lora[5]) == pytest.approx(number(lora[4]) * 4 / 2**20, abs=0.005)
    assert number(individual[2]) == number(individual[1]) and number(individual[4]) > 10 * per_task


def test_a_bad_plan_is_one_line(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    with pytest.raises(SystemExit, match="^error: .*model.sharing.*unknown adapter setting 'rank'"):
        main([str(recipe), "frozen+lora[rank=2]"])
    assert table(str(recipe), [], [], None)[1] == "|---|---|---|---|---|---|"
