"""The config key reference (config/README.md) rendered from the config schema."""

from __future__ import annotations

import os

from hemoprofile.config.validation import SCHEMA_DIR, load_schema


def _resolve_ref(schema: dict, node: dict) -> dict:
    if "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _allowed(node: dict) -> str:
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    parts = [node.get("type", "")]
    for word, key in (("≥", "minimum"), (">", "exclusiveMinimum"), ("≤", "maximum"), ("<", "exclusiveMaximum")):
        if key in node:
            parts.append(f"{word} {node[key]}")
    return " ".join(str(p) for p in parts if p != "")


def schema_key_rows(schema: dict, node: dict | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Flatten a config schema into (key, allowed, default, description) rows, depth first."""
    rows = []
    node = _resolve_ref(schema, node if node is not None else schema)
    for name, sub in node.get("properties", {}).items():
        sub = _resolve_ref(schema, sub)
        key = f"{prefix}{name}"
        default = sub.get("default")
        if isinstance(default, bool):
            default = str(default).lower()  # as written in YAML
        if isinstance(default, list):
            shown_default = "as in config/config.yaml" if default else "`[]`"
        else:
            shown_default = "" if isinstance(default, dict) or default is None else f"`{default}`"
        rows.append((key, _allowed(sub), shown_default, " ".join(str(sub.get("description", "")).split())))
        rows.extend(schema_key_rows(schema, sub, f"{key}."))
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict) and ("$ref" in extra or "properties" in extra):
            rows.extend(schema_key_rows(schema, extra, f"{key}.<name>."))
        items = sub.get("items")
        if isinstance(items, dict):
            rows.extend(schema_key_rows(schema, items, f"{key}[]."))
    return rows


def config_reference_markdown(schema_path: str | os.PathLike | None = None) -> str:
    """Render the config schema as the Markdown key reference kept in config/README.md."""
    schema = load_schema(schema_path or SCHEMA_DIR / "config.schema.yaml")
    lines = ["| key | allowed | default | meaning |", "|---|---|---|---|"]
    for key, allowed, default, description in schema_key_rows(schema):
        lines.append(f"| `{key}` | {allowed} | {default} | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
