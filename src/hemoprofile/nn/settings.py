"""Settings dataclasses (augmentation, training) built from a config mapping, with unknown keys an error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def settings_from_mapping(cls: type[T], d: Mapping | None, what: str) -> T:
    """Build the dataclass ``cls`` from a config mapping; unknown keys raise ``ValueError`` naming them.

    Example
    -------
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class S:
    ...     epochs: int = 1
    >>> settings_from_mapping(S, {"epochs": 3}, "training")
    S(epochs=3)
    >>> settings_from_mapping(S, {"epoch": 3}, "training")
    Traceback (most recent call last):
    ValueError: unknown training key(s) ['epoch']; allowed: ['epochs']
    """
    d = dict(d or {})
    fields = cls.__dataclass_fields__
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    return cls(**d)
