"""What each sharing plan costs in parameters, without training: one table row per plan, built from the
recipe's model with that `model.sharing` (mtbert/model/accounting.py counts it, as a run's parameters.json).

    python -m mtbert.commands.counts recipes/sharing_survey.yaml shared frozen 'frozen+lora[r=16]' frozen+pals \
        --set model.init=... --data-dir ../shared/data

`added per task` is the mean over the recipe's tasks of the parameters only that task uses (its own copies,
adapter, pooler and head): what one more task like them adds to the model.
"""

from __future__ import annotations

import argparse

from mtbert.errors import MtbertError

MIB = 2**20


def table(recipe_path: str, plans: list[str], overrides: list[str], data_dir: str | None) -> list[str]:
    """Markdown lines: plan, parameters, trainable (and %), added per task (parameters and MiB)."""
    from mtbert.config import load_recipe
    from mtbert.data.loading import load_tokenizer
    from mtbert.model.accounting import parameter_counts
    from mtbert.tasks import resolve_tasks
    from mtbert.training.setup import build_model

    lines = ["| plan | parameters | trainable | trainable % | added per task | added per task MiB |",
             "|---|---|---|---|---|---|"]
    for plan in plans:
        recipe = load_recipe(recipe_path, [*overrides, f"model.sharing={plan}"], data_dir=data_dir)
        tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.model.init)
        c = parameter_counts(build_model(recipe, resolve_tasks(recipe), tokenizer))
        lines.append(f"| `{plan}` | {c['total']:,} | {c['trainable']:,} | {100 * c['trainable'] / c['total']:.2f}% "
                     f"| {c['own_per_task']:,.0f} | {c['own_bytes_per_task'] / MIB:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtbert.commands.counts", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("plans", nargs="+", help="sharing plans, e.g. shared F3-S3 'frozen+lora[r=8]'")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    try:
        print("\n".join(table(args.recipe, args.plans, args.set, args.data_dir)))
    except MtbertError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
