"""The typed-settings schema: a leaf setting (`setting`) holds its flag's help, choices or
range, resume rule and report position; a group (`group`) nests a component's settings.
Generic helpers walk, build and copy any config. No TensorFlow here."""

import copy
import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Any

from tl_keras.ranges import Range


def setting(
  default: Any = None,
  help_text: str = "",
  *,
  flag: str | None = "",
  choices: tuple[str, ...] = (),
  allowed: Range | None = None,
  free_on_resume: bool = False,
  report: int | None = None,
) -> Any:
  """A leaf field: `flag` '' is the field's name, None no flag; `allowed` its range; `report`
  its position in report.md's settings list (None: not listed)."""
  metadata = {
    "help": help_text,
    "flag": flag,
    "choices": choices,
    "allowed": allowed,
    "free_on_resume": free_on_resume,
    "report": report,
  }
  return dataclasses.field(default=default, metadata=metadata)


def group(settings_class, help_texts: dict[str, str] | None = None, **values) -> Any:
  """A field holding a settings dataclass, its defaults changed by `values` and the help of
  its settings by `help_texts` ({setting name: text})."""
  return dataclasses.field(
    default_factory=lambda: settings_class(**values), metadata={"help": help_texts or {}}
  )


def _is_group(field: dataclasses.Field) -> bool:
  return dataclasses.is_dataclass(field.type)


def leaves(config) -> Iterator[tuple[Any, dataclasses.Field]]:
  """(owner, field) of every setting of `config` (a config or a settings dataclass), depth
  first in field order."""
  for field in dataclasses.fields(config):
    if not _is_group(field):
      yield config, field
      continue
    for owner, leaf in leaves(getattr(config, field.name)):
      text = field.metadata["help"].get(leaf.name)
      if text:  # this config's own help for the setting
        leaf = copy.copy(leaf)
        leaf.metadata = types.MappingProxyType({**leaf.metadata, "help": text})
      yield owner, leaf


def flag_name(field: dataclasses.Field) -> str | None:
  """The flag that sets `field`: its name unless its metadata says otherwise; None: no flag."""
  flag = field.metadata.get("flag", "")
  return field.name if flag == "" else flag


def value_type(field: dataclasses.Field) -> type:
  """bool, int, float or str: the type of the field's values, Optional removed."""
  kind = field.type
  if typing.get_origin(kind) in (typing.Union, types.UnionType):
    kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
  return kind


def flag_help(field: dataclasses.Field) -> str:
  """The field's help text and, for --help, its allowed range."""
  text = field.metadata.get("help", "")
  allowed = field.metadata.get("allowed")
  if allowed is None:
    return text
  allowed = str(allowed)
  return f"{text} {allowed[0].upper()}{allowed[1:]}."


def as_dict(config) -> dict[str, Any]:
  """{setting name: value} over every leaf of `config`."""
  return {field.name: getattr(owner, field.name) for owner, field in leaves(config)}


def recorded_on_resume(config) -> dict[str, Any]:
  """The settings a resumed run must share with the interrupted one (all but those marked
  free_on_resume)."""
  return {
    field.name: getattr(owner, field.name)
    for owner, field in leaves(config)
    if not field.metadata.get("free_on_resume")
  }


def _set(config, values: dict[str, Any]) -> None:
  owners = {field.name: owner for owner, field in leaves(config)}
  unknown = sorted(set(values) - set(owners))
  if unknown:
    raise TypeError(f"{type(config).__name__} has no setting {', '.join(unknown)}")
  for name, value in values.items():
    setattr(owners[name], name, value)


def make(config_class, **values):
  """A `config_class` with its defaults, leaves named in `values` set: make(FinetuneConfig,
  epochs=3, target='mnist:5-9')."""
  config = config_class()
  _set(config, values)
  return config


def replace(config, **values):
  """A copy of `config` with the leaves named in `values` set."""
  config = copy.deepcopy(config)
  _set(config, values)
  return config
