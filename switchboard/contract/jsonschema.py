"""One converter from a pydantic model to the schemas Switchboard publishes, so that
no setting or field is described twice:

- `openapi_schema`: a Kubernetes structural schema (OpenAPI v3.0 subset) for the
  CRDs (`switchboard_operator.crds`);
- `json_schema`: JSON Schema for the Helm chart's `values.schema.json`
  (`switchboard.cli.chart_schema`).

Both inline pydantic's `$ref`s (neither format may point into `$defs`) and drop
what only clutters (titles, doc-only extras). They differ in three ways:

- `X | None`: Kubernetes has no null, a field is absent instead, so the union
  collapses to `X` (and a `None` default goes); the chart keeps `null` allowed
  unless told not to (`nullable=False`, for values that become Kubernetes objects).
- OpenAPI v3.0 spells `exclusiveMinimum` as a boolean next to `minimum`.
- A structural schema refuses `additionalProperties` next to `properties`, and a
  nested object with nothing required defaults to `{}` there so that its own
  fields' defaults apply.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel

JSON = dict[str, Any]

# What only clutters a published schema (titles, the docs' own defaults).
NOISE = frozenset({"title", "doc_default"})
# Keywords whose value is a schema, a list of schemas, or a map of name → schema.
_ONE = frozenset({"items", "additionalProperties", "not"})
_LIST = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_MAP = frozenset({"properties", "patternProperties"})


def json_schema(
    model: type[BaseModel],
    *,
    by_alias: bool = False,
    nullable: bool = True,
    drop: Collection[str] = NOISE,
) -> JSON:
    """A model's JSON Schema with every `$ref` inlined and the `drop` keywords gone;
    without `nullable`, `X | None` becomes `X`."""
    raw = model.model_json_schema(by_alias=by_alias)
    return flatten(raw, drop=drop, nullable=nullable)


def openapi_schema(model: type[BaseModel]) -> JSON:
    """A Kubernetes structural schema (OpenAPI v3.0 subset) of a model, by its aliases."""
    raw = model.model_json_schema(by_alias=True)
    return flatten(raw, drop=NOISE | {"additionalProperties"}, nullable=False, openapi=True)


def flatten(
    schema: Mapping[str, Any],
    *,
    drop: Collection[str] = NOISE,
    nullable: bool = True,
    openapi: bool = False,
) -> JSON:
    """`schema` (as pydantic writes it) with its `$defs` inlined; see the module's doc
    for `nullable` and `openapi`. A union that `openapi` cannot express raises
    ValueError."""
    defs: Mapping[str, Any] = schema.get("$defs", {})
    dropped = frozenset(drop) | {"$defs"}

    def node(n: Mapping[str, Any]) -> JSON:
        if "$ref" in n:
            target = node(defs[n["$ref"].rsplit("/", 1)[-1]])
            return {**target, **node({k: v for k, v in n.items() if k != "$ref"})}
        if not nullable and "anyOf" in n:
            options = [o for o in n["anyOf"] if o.get("type") != "null"]
            if len(options) == 1:
                rest = {k: v for k, v in n.items() if k != "anyOf"}
                if rest.get("default", 0) is None:  # "absent", not null
                    del rest["default"]
                return {**node(options[0]), **node(rest)}
            if openapi:
                raise ValueError(f"cannot express a union in a structural schema: {dict(n)}")
        out: JSON = {}
        for key, value in n.items():
            if key in dropped:
                continue
            if key in _MAP:
                out[key] = {name: node(sub) for name, sub in value.items()}
            elif key in _ONE and isinstance(value, Mapping):
                out[key] = node(value)
            elif key in _LIST:
                out[key] = [node(sub) for sub in value]
            elif key == "exclusiveMinimum" and openapi:  # the number → OpenAPI 3.0's boolean
                out["minimum"], out["exclusiveMinimum"] = value, True
            else:
                out[key] = value
        if openapi:
            for name, sub in out.get("properties", {}).items():
                # A nested object that is not optional (`X | None`) and needs nothing
                # defaults to {}, so that its own fields' defaults apply.
                optional = "anyOf" in n["properties"][name]
                needs_nothing = "default" not in sub and not sub.get("required")
                if sub.get("type") == "object" and not optional and needs_nothing:
                    sub["default"] = {}
        return out

    return node(schema)
