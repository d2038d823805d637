"""A run that adds tasks to a trained model (`model.add_to: FOLDER`, a folder `mtbert train` wrote).

The trained model's plan must give its tasks adapters (LoRA or PALs) on single copies of the encoder
(frozen or shared parts, no task-owned layers). The run trains only the recipe's tasks, each with a new
adapter and head of the same kind; every weight the trained model had is frozen and left out of the
optimizer, and adapters are independent per task, so every earlier task's predictions stay bit-identical.
The exported model holds all the tasks.

    the trained model's recipe: model section, tasks        +   this recipe: new tasks, sampling, train, eval
      -> the run's recipe: the trained model's model section (and add_to), its tasks then the new ones, and
         stages that train the new tasks only (their dev scores, and the old tasks' unchanged ones, are
         evaluated together)

A key `model.add_to` is used rather than an mtbert folder as `model.init`: init means "weights to start
every part from, all of them trained", while adding a task fixes the model section (init, tokenizer,
size, sharing) and freezes everything it loads; one key saying so is clearer than a mode of another.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mtbert.config import ModelConfig, Recipe, StageConfig, sharing_spec
from mtbert.errors import MtbertError
from mtbert.exported import LoadedModel, load_model
from mtbert.model.adapters import adapter_parameters
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.model.plan import SharingPlan, SharingPlanError

KEY = "model.add_to"


def trained_model(recipe: Recipe) -> LoadedModel | None:
    """The model `model.add_to` names, checked to take new tasks; None without the key."""
    folder = recipe.model.add_to
    if not folder:
        return None
    if Path(folder).resolve() == Path(recipe.output_dir).resolve():
        raise MtbertError(f"{KEY}: {folder} is also output_dir; write the extended model into another folder")
    trained = load_model(folder, data_dir=recipe.data_dir)
    plan = trained.model.config.sharing
    if plan.adapter is None:
        raise MtbertError(f"{KEY}: {folder} has no adapters ({plan.describe()}); new tasks are added as adapters "
                          f"to a model trained with one, e.g. model.sharing: frozen+lora[r=8]")
    return trained


def extended_recipe(recipe: Recipe, trained: LoadedModel) -> Recipe:
    """The recipe the run trains: the trained model's model section and tasks, this recipe's new tasks after
    them, and stages restricted to the new tasks."""
    _check_model_section(recipe.model, trained.recipe.model)
    old = trained.recipe.tasks
    again = [name for name in recipe.tasks if name in old]
    if again:
        raise MtbertError(f"tasks.{again[0]}: the model in {recipe.model.add_to} already has task {again[0]!r}; "
                          f"a run with {KEY} trains new tasks only (its tasks: {', '.join(old)})")
    new = list(recipe.tasks)
    # A stage names the recipe's own tasks (config.py checks); one that names none trains them all.
    stages = [dataclasses.replace(stage, tasks=stage.tasks or new) for stage in recipe.stages or [StageConfig()]]
    model = dataclasses.replace(trained.recipe.model, add_to=recipe.model.add_to)
    return dataclasses.replace(recipe, model=model, tasks={**old, **recipe.tasks}, stages=stages)


def _check_model_section(given: ModelConfig, trained: ModelConfig) -> None:
    """Every model key the recipe sets (other than add_to) must agree with the trained model's."""
    defaults = ModelConfig()
    for field in dataclasses.fields(ModelConfig):
        mine, theirs = getattr(given, field.name), getattr(trained, field.name)
        if field.name != "add_to" and mine != getattr(defaults, field.name) and mine != theirs:
            raise MtbertError(f"model.{field.name}: a run with {KEY} takes the model section from the trained "
                              f"model, whose {field.name} is {_plain(theirs)!r}, not {_plain(mine)!r}; leave "
                              f"model.{field.name} out")


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def extended_model(recipe: Recipe, heads: dict[str, TaskHeadSpec], trained: LoadedModel) -> MultiTaskModel:
    """The trained model with the new tasks' adapters and heads; every weight it had loaded and frozen."""
    old_config = trained.model.config
    new = [name for name in heads if name not in old_config.tasks]
    for name, spec in old_config.tasks.items():
        if heads[name] != spec:
            raise MtbertError(f"{KEY}: task {name!r} resolves to another head than the trained model's; the trained "
                              f"model's stored recipe no longer describes it (a changed built-in task?)")
    try:
        config = MultiTaskConfig(encoder=old_config.encoder, tasks=heads, sharing=sharing_spec(recipe.model.sharing))
    except SharingPlanError as e:
        raise MtbertError(str(e)) from None
    _check_plan(config.sharing, old_config.sharing, new, recipe.model.add_to)
    model = MultiTaskModel(config)
    missing, unexpected = model.load_state_dict(trained.model.state_dict(), strict=False)
    strays = unexpected + [key for key in missing if not any(f".{name}." in f".{key}" for name in new)]
    if strays:  # a weight of the trained model without a place, or a place that is neither loaded nor new
        raise MtbertError(f"{KEY}: the trained model and the extended one differ at {strays[0]}")
    trainable = {id(p) for name in new for p in adapter_parameters(model.encoder, config.sharing)[name]}
    trainable |= {id(p) for name in new for part in (model.heads, model.poolers) if name in part
                  for p in part[name].parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
    return model


def _check_plan(plan: SharingPlan, old: SharingPlan, new: list[str], folder: str) -> None:
    """Earlier tasks keep their branches and adapters; a new task runs through copies the model already has."""
    for task in old.tasks:
        if plan.path(task) != old.path(task) or plan.adapter_owner(task) != old.adapter_owner(task):
            raise MtbertError(f"{KEY}: task {task!r} would run through other weights than in {folder}")
    for task in new:
        owned = sorted({owner for owner in (plan.path(task).embeddings, *plan.path(task).layers)
                        if owner not in ("frozen", "shared")})
        if owned:
            raise MtbertError(f"{KEY}: the plan of {folder} ({old.describe()}) gives each task layers of its own, "
                              f"which a new task would have to train from scratch; add tasks to a model whose "
                              f"encoder parts are frozen or shared (e.g. frozen+lora[r=8])")
