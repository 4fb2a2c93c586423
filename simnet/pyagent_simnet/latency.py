"""Delay distributions for links, in microseconds.

Each distribution is built once from its scenario table and then sampled with the network's generator,
so the same seed draws the same delays. Samples are never negative: a link cannot deliver before it sends.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from pyagent.errors import ConfigError

US_PER_MS = 1_000

Sampler = Callable[[random.Random], int]

# The parameters each distribution takes, in milliseconds (or unitless for shape parameters).
KINDS: dict[str, tuple[str, ...]] = {
    "constant": ("ms",),
    "uniform": ("min_ms", "max_ms"),
    "normal": ("mean_ms", "sd_ms"),
    "lognormal": ("median_ms", "sigma"),
    "pareto": ("min_ms", "alpha"),
}


def build(spec: Mapping[str, Any], where: str) -> Sampler:
    """Return a sampler for ``spec`` such as ``{kind = "lognormal", median_ms = 0.5, sigma = 0.4}``."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: unknown latency distribution {kind!r} (one of {', '.join(KINDS)})")
    params: dict[str, float] = {}
    for name in KINDS[kind]:
        value = spec.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}.{name}: required number for a {kind} distribution")
        if value < 0:
            raise ConfigError(f"{where}.{name}: must not be negative, got {value}")
        params[name] = float(value)
    for name in spec:
        if name != "kind" and name not in KINDS[kind]:
            raise ConfigError(f"{where}.{name}: unknown key for a {kind} distribution")
    return _sampler(kind, params, where)


def _sampler(kind: str, p: dict[str, float], where: str) -> Sampler:
    if kind == "constant":
        fixed_us = int(p["ms"] * US_PER_MS)
        return lambda rng: fixed_us
    if kind == "uniform":
        low_us, high_us = p["min_ms"] * US_PER_MS, p["max_ms"] * US_PER_MS
        if high_us < low_us:
            raise ConfigError(f"{where}.max_ms: must be at least min_ms")
        return lambda rng: int(rng.uniform(low_us, high_us))
    if kind == "normal":
        mean_us, sd_us = p["mean_ms"] * US_PER_MS, p["sd_ms"] * US_PER_MS
        return lambda rng: max(0, int(rng.gauss(mean_us, sd_us)))
    if kind == "lognormal":
        if p["median_ms"] <= 0:
            raise ConfigError(f"{where}.median_ms: must be positive for a lognormal distribution")
        mu = math.log(p["median_ms"] * US_PER_MS)
        sigma = p["sigma"]
        exp = math.exp
        # exp of a normal draw is what lognormvariate computes; gauss draws half as many uniforms as
        # normalvariate, and every frame of a run samples this.
        return lambda rng: int(exp(rng.gauss(mu, sigma)))
    if p["alpha"] <= 0:
        raise ConfigError(f"{where}.alpha: must be positive for a pareto distribution")
    scale_us, alpha = p["min_ms"] * US_PER_MS, p["alpha"]
    return lambda rng: int(scale_us * rng.paretovariate(alpha))
