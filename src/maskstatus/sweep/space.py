"""The search space of a sweep: a YAML mapping from dotted config keys to how Optuna draws their values.

    optimizer.lr: {type: log-float, low: 1.0e-4, high: 1.0e-2}
    model.dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
    train.batch_size: {type: int, low: 32, high: 128, step: 32}
    scheduler.name: {type: categorical, choices: [cosine, step]}

Every key must be a field of the config (a dict field such as ``loss.task_weights`` takes its own keys below
it), and every value the space can draw must be one the config accepts: both are checked, naming the key,
before any trial trains (:func:`check_space`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import Config, ConfigError, load_config, parse_override

ParamType = Literal["float", "log-float", "int", "categorical"]


class Param(BaseModel):
    """How one config key is drawn: a range (float, log-float, int) or a list of choices (categorical)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: ParamType = Field(description="float, log-float (drawn uniformly in log space), int or categorical")
    low: float | None = Field(None, description="smallest value (float, log-float, int)")
    high: float | None = Field(None, description="largest value, included (float, log-float, int)")
    step: float | None = Field(
        None, gt=0, description="draw only low, low + step, ... (float and int; default 1 for int)"
    )
    choices: list[Any] | None = Field(None, description="the values to choose from (categorical)")

    @model_validator(mode="after")
    def _range_or_choices(self) -> Param:
        if self.type == "categorical":
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("a categorical parameter takes choices, not low/high/step")
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            if len({yaml.safe_dump(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices {self.choices} name a value twice")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.type == "log-float":
            if self.low <= 0:
                raise ValueError(f"a log-float parameter needs low > 0, got {self.low:g}")
            if self.step is not None:
                raise ValueError("a log-float parameter takes no step (Optuna cannot step in log space)")
        if self.type == "int":
            for name, value in (("low", self.low), ("high", self.high), ("step", self.step)):
                if value is not None and not float(value).is_integer():
                    raise ValueError(f"an int parameter needs a whole {name}, got {value:g}")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound what the space can draw: low and high, or every choice."""
        if self.type == "categorical":
            assert self.choices is not None
            return list(self.choices)
        assert self.low is not None
        assert self.high is not None
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def suggest(self, trial: Any, key: str) -> Any:
        """Draw this parameter for an Optuna trial (``trial.suggest_*``)."""
        if self.type == "categorical":
            assert self.choices is not None
            # Optuna's choices must be None, bool, int, float or str; a list or mapping is offered as its YAML.
            options = [c if _plain(c) else _as_yaml(c) for c in self.choices]
            drawn = trial.suggest_categorical(key, options)
            return drawn if _plain(drawn) else yaml.safe_load(drawn)
        assert self.low is not None
        assert self.high is not None
        if self.type == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.type == "log-float")


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class SearchSpace(BaseModel):
    """The parameters of a sweep, by dotted config key (in the file's order)."""

    params: dict[str, Param]
    source: str = "search space"

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """Config overrides ``key=value`` setting ``values`` (a trial's params, as the space draws them)."""
        out = []
        for key, value in values.items():
            param = self.params[key]
            if param.type == "categorical" and not _plain(value):
                value = yaml.safe_load(value) if isinstance(value, str) else value
            out.append(override(key, value))
        return out

    def optuna_params(self, values: dict[str, Any]) -> dict[str, Any]:
        """Config values by key -> the values Optuna records (a list or mapping choice as its YAML), to enqueue."""
        return {k: v if _plain(v) else _as_yaml(v) for k, v in values.items()}


def _as_yaml(value: Any) -> str:
    """One-line YAML of a value, as an override's right-hand side: ``parse_override`` reads it back as it was."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).strip()
    return text.removesuffix("...").strip()  # a bare scalar's dump ends the document with '...'


def override(key: str, value: Any) -> str:
    """``key=value`` that the config's override parser reads back as exactly ``value``.

    Through YAML, not ``str``: ``str(1e-05)`` is '1e-05', which YAML 1.1 reads as a string, not a number.
    """
    item = f"{key}={_as_yaml(value)}"
    _, parsed = parse_override(item)
    if parsed != value:  # a value YAML cannot carry through one line: a bug to see, not a silent change
        raise ConfigError(f"search space {key}: value {value!r} does not survive as an override ({item!r})")
    return item


def read_space(path: Path | str) -> SearchSpace:
    """Read and validate a search-space YAML; every error is a ConfigError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"search space {path} must map dotted config keys to parameters, e.g. "
            "'optimizer.lr: {type: log-float, low: 1.0e-4, high: 1.0e-2}'"
        )
    params: dict[str, Param] = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(
                f"search space {path}: {key}: expected a mapping such as "
                f"{{type: float, low: 0.0, high: 1.0}}, got {spec!r}"
            )
        try:
            params[str(key)] = Param.model_validate(spec)
        except ValidationError as err:
            reasons = "; ".join(
                (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                for e in err.errors()
            )
            raise ConfigError(f"search space {path}: {key}: {reasons}") from None
        check_config_key(str(key), f"search space {path}")
    return SearchSpace(params=params, source=str(path))


def check_config_key(key: str, where: str) -> None:
    """Refuse a dotted key that is not a config field (a dict field such as ``loss.task_weights`` takes any key)."""
    model: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            known = ", ".join(sorted(fields)) if fields else "none: it is not a section"
            parent = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"{where}: {key} is not a config field ({parent} has {known})")
        annotation = fields[part].annotation
        if i == len(parts) - 1:
            return
        section = _section_model(annotation)
        if section is None:
            if _is_dict(annotation) and i == len(parts) - 2:
                return  # loss.task_weights.age: a key of a dict field, checked by the value checks below
            raise ConfigError(f"{where}: {key} is not a config field ({'.'.join(parts[: i + 1])} is not a section)")
        model = section


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds (also behind ``X | None``), or None for a plain value."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, type(int | None)) else (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _is_dict(annotation: Any) -> bool:
    candidates = get_args(annotation) if get_origin(annotation) in (Union, type(int | None)) else (annotation,)
    return any(c is dict or get_origin(c) is dict for c in candidates)


def check_space(space: SearchSpace, config: Path | str | None, overrides: Sequence[str] = ()) -> Config:
    """Validate every value the space can reach through the config, one key at a time; returns the base config.

    Each key's low and high (or each of its choices) is set on the base config and validated as ``train``
    would validate it, so a value the config refuses (a dropout of 1.5, an unknown scheduler) is named with
    its key now, not found by a failing trial hours later.
    """
    base = load_config(config, overrides)
    for key, param in space.params.items():
        for value in param.extremes():
            try:
                load_config(config, [*overrides, override(key, value)])
            except ConfigError as err:
                raise ConfigError(f"{space.source}: {key}={_as_yaml(value)} is refused by the config: {err}") from None
    return base


def base_values(space: SearchSpace, cfg: Config) -> dict[str, Any]:
    """The base config's own value of every key of the space (to enqueue it as a baseline trial)."""
    data = cfg.model_dump(mode="json")
    values = {}
    for key in space.params:
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{space.source}: {key} has no value in the base config to start from")
            node = node[part]
        values[key] = node
    return values
