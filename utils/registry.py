"""A name -> entry table that code registers into once and every user reads (timm's
``@register_model``, mmseg's ``MODELS.register_module``), and ``import_object`` for entries
that name their code by import path, so that reading a registry imports no heavy module
(no torch: ``--help`` and the argument checks start at once).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, Iterator, TypeVar, Union

from utils.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order. ``registry[name]`` is a ``UserError`` naming
    the choices for an unknown name (``flag`` is how the user spells it, e.g.
    ``--backbone``). Iterating gives the names, so a registry is an argparse ``choices``."""

    def __init__(self, kind: str, flag: str):
        self.kind = kind
        self.flag = flag
        self._entries: Dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (a ``ValueError`` if the name is taken); returns it."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(f"unknown {self.flag} {name!r}; choose one of "
                            f"{', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def import_object(target: Union[str, Callable]) -> Callable:
    """``target`` itself when it is already an object, else the object a
    ``"package.module:name"`` path names (imported now)."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    if not name:
        raise ValueError(f"{target!r} is not an import path of the form 'package.module:name'")
    return getattr(importlib.import_module(module), name)
