"""Hydra's sweep syntax as Optuna distributions, and a trial's values back as Hydra overrides.

    optimizer.lr: tag(log, interval(1e-4, 1e-1))   -> FloatDistribution(1e-4, 1e-1, log=True)
    loader.batch_size: choice(32, 64, 128)        -> CategoricalDistribution([32, 64, 128])
    model.dropout: range(0.0, 0.6, 0.1)           -> FloatDistribution(0.0, 0.5, step=0.1) (stop excluded)
    epochs: interval(5, 20)                       -> IntDistribution(5, 20)

Anything else (``epochs=3``, ``dataset=plates``) is the same in every trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from imgclf.errors import ConfigError


@dataclass
class SearchSpace:
    """What the trials choose (``distributions``) and what every trial gets as it is (``fixed`` overrides)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> the override as written

    def grid(self) -> dict[str, list[Any]]:
        """Every value of each parameter, for Optuna's GridSampler; only choice and range can be listed."""
        values = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = list(dist.choices)
            elif isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None and not dist.log:
                count = round((dist.high - dist.low) / dist.step) + 1
                values[name] = [dist.low + i * dist.step for i in range(count)]
            else:
                raise ConfigError(
                    f"hydra.sweeper.params.{name}: the grid sampler needs choice(...) or range(...), "
                    f"not {dist}; use hydra/sweeper/sampler=tpe for interval(...)"
                )
        return values


def parse(overrides: list[str]) -> SearchSpace:
    """``key=value`` strings (``hydra.sweeper.params`` first, then the command line, which wins) as a space."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"the search space cannot be parsed: {exc}") from None
    space = SearchSpace()
    for override, text in zip(parsed, overrides, strict=True):
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = distribution(override)
        else:
            space.fixed[key] = text
    return space


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    key, value = override.get_key_element(), override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        # numbers and true/false stay values; anything else is kept as override text ('a\\ b', [256])
        return CategoricalDistribution(
            [
                x if isinstance(x, (int, float, bool)) else Transformer.str(x)
                for x in override.sweep_iterator(transformer=Transformer.identity)
            ]
        )
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        return _range(key, value)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"{key}: {override.input_line} is not a search space; use choice, range or interval")


def _range(key: str, value: RangeSweep) -> BaseDistribution:
    """``range(start, stop, step)``: stop excluded, as in Hydra's grid sweeps."""
    start, stop, step = value.start, value.stop, value.step if value.step is not None else 1
    if step <= 0 or stop <= start:
        raise ConfigError(f"{key}: range({start}, {stop}, {step}) is empty; it counts up from start, stop excluded")
    count = int((stop - start) / step - 1e-9) + 1
    high = start + (count - 1) * step
    if all(isinstance(v, int) for v in (start, stop, step)):
        return IntDistribution(int(start), int(high), step=int(step))
    return FloatDistribution(float(start), float(round(high, 12)), step=float(step))


def as_override(key: str, value: Any) -> str:
    """A trial's value as a Hydra override string (a word of a choice is override text already)."""
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, float):  # 12 digits: range(0.0, 0.5, 0.1) gives 0.3, not 0.30000000000000004
        return f"{key}={float(f'{value:.12g}')!r}"
    return f"{key}={value}"


def quoted(text: str) -> str:
    """``text`` as one quoted string of Hydra's override grammar, whatever characters it holds."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
