"""The protocol: recipes (:mod:`~tagllm.protocol.recipe`), their inputs
(:mod:`~tagllm.protocol.inputs`), the plan (:mod:`~tagllm.protocol.plan`), the run over the
tag store (:mod:`~tagllm.protocol.run`) and the one-stage / saved-tag commands
(:mod:`~tagllm.protocol.standalone`)."""

from tagllm.errors import RecipeError
from tagllm.protocol.plan import StagePlan, plan, plan_table
from tagllm.protocol.recipe import Recipe, load_recipe, recipe_from_dict
from tagllm.protocol.run import RunSummary, export, run

__all__ = ["Recipe", "RecipeError", "RunSummary", "StagePlan", "export", "load_recipe", "plan",
           "plan_table", "recipe_from_dict", "run"]
