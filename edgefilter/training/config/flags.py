"""The command-line flags, derived from the config's fields (see the package doc):
:data:`FLAGS`, :func:`as_flags`, :func:`from_flags` and :func:`foreign_flags`."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from edgefilter.training.config.schema import TrainConfig

__all__ = ["BY_NAME", "FLAGS", "Flag", "as_flags", "foreign_flags", "from_flags"]


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag: a leaf field of :class:`TrainConfig` or of a config in it.

    Attributes:
      name: the flag's name (``metadata["flag"]``, else the field's name).
      path: the field's attribute path from a TrainConfig, e.g. ``("filter", "window")``.
      kind: ``str``, ``int``, ``float``, ``bool`` or ``tuple`` (a list of floats).
      default: the field's default.
      help: the field's ``metadata["help"]``, after its group's (``"EIF: ..."``).
      methods: the methods the setting belongs to (``metadata["methods"]``, its own or
        its nested config's field's); None for every method.
    """

    name: str
    path: tuple[str, ...]
    kind: type
    default: Any
    help: str
    methods: tuple[str, ...] | None = None


def _field_types(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """Each field of the dataclass ``cls`` with its type, ``None`` and type arguments dropped."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if isinstance(hint, types.UnionType):  # `X | None`.
            (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
        out.append((field, typing.get_origin(hint) or hint))
    return out


def _walk(
    cls: type,
    path: tuple[str, ...] = (),
    group: str = "",
    methods: tuple[str, ...] | None = None,
) -> list[Flag]:
    out = []
    for field, kind in _field_types(cls):
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} needs metadata['help']: it is a flag")
        help_, where = field.metadata["help"], (*path, field.name)
        owners = field.metadata.get("methods", methods)
        if dataclasses.is_dataclass(kind):
            out += _walk(kind, where, help_, owners)
        else:
            name = field.metadata.get("flag", field.name)
            help_ = f"{group}: {help_}" if group else help_
            out.append(Flag(name, where, kind, field.default, help_, owners))
    return out


FLAGS: tuple[Flag, ...] = tuple(_walk(TrainConfig))
BY_NAME = {f.name: f for f in FLAGS}
if len(BY_NAME) != len(FLAGS):
    raise TypeError(f"two config fields share a flag name: {[f.name for f in FLAGS]}")


def foreign_flags(methods: Sequence[str], given: Sequence[str]) -> list[str]:
    """The flags among ``given`` that none of ``methods`` uses, in ``given``'s order.

    Which flag belongs to which methods is declared once, in its field's
    ``metadata["methods"]`` (:func:`setting`): ``--r_set`` and the other ``EIF:`` flags
    belong to eif and eif_emp, the ``EMP:`` flags to emp and eif_emp, the rest to every
    method. ``foreign_flags(["sgd"], ["r_set", "epochs"]) == ["r_set"]``.
    """
    return [
        name
        for name in given
        if name in BY_NAME
        and BY_NAME[name].methods is not None
        and not set(methods) & set(BY_NAME[name].methods)
    ]


def as_flags(config: TrainConfig) -> dict[str, Any]:
    """``{flag name: value}`` for every flag: the flat record of ``config``."""
    out = {}
    for flag in FLAGS:
        value = config
        for attribute in flag.path:
            value = getattr(value, attribute)
        out[flag.name] = value
    return out


def from_flags(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """The TrainConfig of ``base`` (default: ``TrainConfig()``) with flag ``values`` set.

    ``values`` maps flag names to values, e.g. ``{"method": "eif", "eif_window": 4}``;
    ``lr_boundaries`` may be a sequence of numbers or of numeric strings (as absl's list
    flags give). A bad value raises ``ValueError`` naming its flag:
    ``--eif_window=0 is invalid: must be a positive integer``.
    """
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown flags {unknown}; the flags are {', '.join(BY_NAME)}")
    flat = as_flags(base if base is not None else TrainConfig())
    flat.update({name: _parse(BY_NAME[name], value) for name, value in values.items()})
    return _build(TrainConfig, (), flat)


def _parse(flag: Flag, value: Any) -> Any:
    if flag.kind is not tuple or value is None:
        return value
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        shown = ",".join(map(str, items)) if isinstance(items, Sequence) else items
        raise ValueError(
            f"--{flag.name}={shown!r} is invalid: comma-separated fractions in (0, 1)"
        ) from None


def _build(cls: type, path: tuple[str, ...], flat: dict[str, Any]) -> Any:
    """An instance of ``cls`` (at ``path`` in a TrainConfig) from flat flag values."""
    kwargs, flag_of = {}, {}
    for field, kind in _field_types(cls):
        where = (*path, field.name)
        if dataclasses.is_dataclass(kind):
            kwargs[field.name] = _build(kind, where, flat)
        else:
            flag_of[field.name] = field.metadata.get("flag", field.name)
            kwargs[field.name] = flat[flag_of[field.name]]
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise _name_the_flag(e, kwargs, flag_of) from None


def _name_the_flag(error: ValueError, kwargs: dict[str, Any], flag_of: dict[str, str]) -> Exception:
    """``window=0 must ...`` (a field's error) as ``--eif_window=0 is invalid: must ...``."""
    message = str(error)
    for name, flag in flag_of.items():
        prefix = f"{name}={kwargs[name]!r} "
        if message.startswith(prefix + "must"):
            return ValueError(f"--{flag}={kwargs[name]!r} is invalid: {message[len(prefix) :]}")
    return error
