"""`vtpdeploy recipe`: every recipe key with its default and meaning, read from the pydantic schema."""

from __future__ import annotations

from typing import Optional

import typer


def recipe_reference(section: str | None = None) -> list[tuple[str, str, str]]:
    """(dotted key, default as YAML, meaning) for every leaf key of the recipe, or of one section."""
    import yaml
    from pydantic import BaseModel

    from ..errors import RecipeError
    from ..train.recipe import Recipe

    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], values: dict, prefix: str) -> None:
        for name, field in model.model_fields.items():
            kind = field.annotation
            key = f"{prefix}{name}"
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                walk(kind, kind().model_dump(mode="json"), f"{key}.")  # the section's own defaults
                continue
            default = yaml.safe_dump(values.get(name), default_flow_style=True, width=10_000).strip()
            default = default.removesuffix("\n...").removesuffix("...").strip()
            rows.append((key, default, " ".join(_description(model, name).split())))

    walk(Recipe, Recipe().model_dump(mode="json"), "")
    if section is not None:
        rows = [r for r in rows if r[0] == section or r[0].startswith(f"{section}.")]
        if not rows:
            sections = sorted({r[0].split(".")[0] for r in recipe_reference()})
            raise RecipeError(f"no recipe section or key {section!r}; choose one of {', '.join(sections)}")
    return rows


def _description(model, name: str) -> str:
    """The field's description, else the one of the section it overrides (e.g. OptimSection.lr)."""
    for cls in model.__mro__:
        field = getattr(cls, "model_fields", {}).get(name)
        if field is not None and field.description:
            return field.description
    return ""


def register(app: typer.Typer) -> None:
    @app.command("recipe")
    def recipe(section: Optional[str] = typer.Argument(None, help="Only this section or key, e.g. prune, data.path."),
               ) -> None:
        """Every recipe key with its default and meaning (from the recipe schema, so it cannot drift)."""
        typer.echo("# key, default when left out of its section, meaning. A recipe without a `data:` section runs the\n"
                   "# quickstart's digits (interpolation bilinear, crop_pct 1.0); recipes/own_model.yaml is the template.")
        for key, default, meaning in recipe_reference(section):
            typer.echo(f"{key:<32} {default:<24} {meaning}".rstrip())
