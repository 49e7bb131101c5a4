"""One name per setting: the online agents' internal names, and the spellings of other libraries
(TRL) accepted for them, resolved in one place.

Every online agent (`agents.core.OnPolicyLMAlgorithm` and its subclasses) takes its settings
under the internal names; `with_aliases` lets its constructor (and ``run_ppo.py agent.*`` keys)
accept the spellings in `ALIASES` too. Giving both spellings of one setting is an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

# Accepted spelling → internal name (the SB3 name where SB3 has one).
ALIASES: dict[str, str] = {
    "beta": "kl_coef",  # TRL's β of the KL term (GRPO, RLOO); DPO's and KTO's β is another quantity
    "epsilon": "clip_range",  # TRL's ratio clip ε
    "epsilon_high": "clip_range_high",  # TRL's upper clip ε_high (DAPO's clip-higher)
    "num_iterations": "n_epochs",  # TRL's μ: passes over each generated batch (not the run's ``iterations``)
}


def resolve_aliases(owner: str, kwargs: dict[str, Any], aliases: dict[str, str] = ALIASES) -> dict[str, Any]:
    """``kwargs`` with each accepted spelling renamed to its internal name.

    :param owner: who takes the settings (named in the error).
    :raises TypeError: when a setting is given under both of its names.
    """
    resolved = dict(kwargs)
    for alias, name in aliases.items():
        if alias in resolved:
            if name in resolved:
                raise TypeError(
                    f"{owner} got both {alias}= and {name}=, two spellings of one setting: give only {name}="
                )
            resolved[name] = resolved.pop(alias)
    return resolved


def with_aliases(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a constructor so it accepts the spellings of `ALIASES` for its keyword arguments."""

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **resolve_aliases(type(self).__name__, kwargs))

    wrapper.accepts_aliases = True  # type: ignore[attr-defined]
    return wrapper
