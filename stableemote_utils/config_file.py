"""A training run's settings as a TOML file: ``stableemote train --config run.toml``.

Every run writes its fully resolved settings to ``config.toml`` in its run folder
(:func:`write_config_file`); :func:`read_config_file` reads such a file, or a short one a
person wrote, and refuses an unknown key or a value of the wrong type in one line that
names the key. Keys are :class:`~stableemote_utils.training_config.TrainConfig` fields
(``resolution_px``) or the command line's spelling of them (``resolution``,
``stop-after``); ``recipe`` picks the named config the file starts from. TOML has no
"none": leave a key out for its default.

Read with the standard library's ``tomllib``; written with ``tomlkit``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from pathlib import Path

import tomlkit

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.training_config import TRAIN_OPTIONS, TrainConfig, field_type

CONFIG_FILE_NAME = "config.toml"
RECIPE_KEY = "recipe"
_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}


def config_keys() -> dict[str, str]:
    """Every key a config file may hold -> the :class:`TrainConfig` field it sets."""
    keys = {f.name: f.name for f in dataclasses.fields(TrainConfig)}
    for option in TRAIN_OPTIONS:
        flag = option.flag.removeprefix("--")
        keys.setdefault(flag, option.field)
        keys.setdefault(flag.replace("-", "_"), option.field)
    return keys


def _check_value(key: str, field: str, value: object, where: str) -> object:
    """``value`` as the field's type, or a one-line error naming ``key``."""
    kind = field_type(field)
    if kind is tuple:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        wanted = 'a list of texts, e.g. ["cat face", "red heart"]'
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        wanted = "a finite number"
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    else:
        wanted = _TYPE_NAMES.get(kind, kind.__name__)
    raise StableEmoteError(
        f"{where}: '{key}' must be {wanted}, not {value!r}. Fix it or remove the line."
    )


def read_config_file(path: str | os.PathLike) -> tuple[str | None, dict[str, object]]:
    """Read a run's settings from a TOML file.

    Args:
        path: the file, e.g. ``run.toml`` or a run folder's ``config.toml``.

    Returns:
        ``(recipe or None, {TrainConfig field: value})``, values of the field's type
        (lists become tuples).

    Raises:
        StableEmoteError: a missing or unreadable file, bad TOML, an unknown key or a value
            of the wrong type, in one line that names the file and the key.
    """
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise StableEmoteError(
            f"--config {path}: no such file. Pass a TOML file, e.g. a run folder's config.toml."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise StableEmoteError(f"--config {path}: cannot read it ({err}).") from None
    except tomllib.TOMLDecodeError as err:
        raise StableEmoteError(f"--config {path} is not valid TOML: {err}.") from None
    keys = config_keys()
    recipe, settings = None, {}
    for key, value in data.items():
        if key == RECIPE_KEY:
            if not isinstance(value, str):
                raise StableEmoteError(f"{path}: 'recipe' must be a text, not {value!r}.")
            recipe = value
            continue
        field = keys.get(key)
        if field is None:
            raise StableEmoteError(
                f"{path}: unknown key '{key}'. Known keys: recipe, "
                + ", ".join(f.name for f in dataclasses.fields(TrainConfig))
                + "."
            )
        if field in settings:
            raise StableEmoteError(f"{path}: '{key}' sets {field} a second time; keep one.")
        settings[field] = _check_value(key, field, value, str(path))
    return recipe, settings


def write_config_file(config: TrainConfig, folder: str | os.PathLike) -> Path:
    """Write ``folder/config.toml``: every setting of ``config`` that is not ``None``.

    The file is written aside and renamed into place, so an interrupted write leaves the
    previous file (or none), never half of one.

    Returns:
        The file written.
    """
    path = Path(folder) / CONFIG_FILE_NAME
    doc = tomlkit.document()
    doc.add(tomlkit.comment("The settings of this run. Repeat it with:"))
    doc.add(tomlkit.comment(f"  stableemote train --config {path} --output-dir NEW_FOLDER"))
    for key, value in config.to_dict().items():
        if value is not None:
            doc[key] = list(value) if isinstance(value, tuple | list) else value
    aside = path.with_name(f".{CONFIG_FILE_NAME}.{os.getpid()}.tmp")
    aside.write_text(tomlkit.dumps(doc), encoding="utf-8")
    os.replace(aside, path)
    return path
