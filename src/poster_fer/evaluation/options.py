"""Folding the keywords a function took before its options object into that object, with a warning."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from ..naming import warn_deprecated

O = TypeVar("O")

__all__ = ["legacy_options", "positional_settings"]


def legacy_options(options: O | None, kind: type[O], legacy: Mapping[str, Any], call: str) -> O:
    """``options`` (or the defaults) with the old-style keywords in ``legacy`` written over it.

    Why a warning and not a silent merge: the keywords still work, so no caller breaks, but each old call is
    told which options object to move to. An unknown keyword is a TypeError, as it was before.
    """
    base = options if options is not None else kind()
    if not legacy:
        return base
    known = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(legacy) - known)
    if unknown:
        raise TypeError(f"{call}() got unexpected keyword argument(s) {unknown}")
    warn_deprecated(f"{call}(..., {', '.join(f'{k}=' for k in legacy)}) is deprecated: pass "
                    f"options={kind.__name__}(...)")
    return dataclasses.replace(base, **legacy)  # type: ignore[type-var]


def positional_settings(
    args: Sequence[Any], names: Sequence[str], keywords: Mapping[str, Any], call: str
) -> dict[str, Any]:
    """The old positional arguments as keywords (``names`` in their old order), for :func:`legacy_options`; one
    also given in ``keywords`` is a TypeError, as it was before."""
    if len(args) > len(names):
        raise TypeError(f"{call}() takes at most {len(names)} settings by position ({', '.join(names)}), "
                        f"got {len(args)}")
    by_position = dict(zip(names, args, strict=False))
    twice = sorted(set(by_position) & set(keywords))
    if twice:
        raise TypeError(f"{call}() got multiple values for argument(s) {twice}")
    return by_position
