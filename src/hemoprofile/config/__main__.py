"""python -m hemoprofile.config: print the config key reference (Markdown) rendered from the schema."""

from hemoprofile.config.reference import config_reference_markdown

print(config_reference_markdown(), end="")
