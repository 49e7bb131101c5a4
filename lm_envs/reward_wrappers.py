"""Reward wrappers: reshape the reward of ended episodes without touching the task.

One implementation of the reward logic, two shells:

* a `RewardTransform` maps the rewards of a batch of ended episodes (plus their completions,
  references, prompts and infos) to new rewards and named components;
* `apply_transform` runs a transform on chosen rows of a step's rewards/infos;
* `RewardWrapper` (a `gymnasium.Wrapper` on one `TokenEnv`) and `VecRewardWrapper` (an SB3
  `VecEnvWrapper` on `TokenVecEnv`) both call `apply_transform`, so they give the same numbers.

Transforms compose: `ReplaceReward`, `AddTerms` (with `LengthTerm`, `InfoTerm`, DAPO's
`OverlongTerm`, any of them behind a `ScoreGate`), `Scale`, `Clip`, `Normalize`, `Compose`, and
`from_config` builds them from plain dicts (YAML/CLI). After a wrapper, the returned reward and
``info["episode"]["r"]`` are the transformed value, ``info["score"]`` stays the raw task score,
and ``info["reward_components"]`` holds ``{"score": task score, <term name>: value, ...}``
(agents log these as ``rewards/<name>/mean``). May import `rewards`; never `policies`/`agents`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvWrapper

Components = dict[str, np.ndarray]


@runtime_checkable
class RewardTransform(Protocol):
    """``(rewards, completions, references, prompts, infos) -> (new rewards, components)``.

    ``rewards`` is float32 ``(n,)``: the rewards the wrapped env returned for ``n`` ended
    episodes (the task score, or an inner wrapper's result). Components are ``(n,)`` arrays.
    """

    def __call__(
        self,
        scores: np.ndarray,
        completions: Sequence[str],
        references: Sequence[Any],
        prompts: Sequence[str],
        infos: Sequence[dict[str, Any]],
    ) -> tuple[np.ndarray, Components]: ...


class Transform:
    """Base class of the built-in transforms: stateless unless they override the state methods."""

    def __call__(
        self,
        scores: np.ndarray,
        completions: Sequence[str],
        references: Sequence[Any],
        prompts: Sequence[str],
        infos: Sequence[dict[str, Any]],
    ) -> tuple[np.ndarray, Components]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _state_of(transform: Any) -> dict[str, Any]:
    return transform.state_dict() if hasattr(transform, "state_dict") else {}


# -- terms: anything that scores ended episodes --------------------------------------------------
Term = Callable[..., Any]


def _takes_infos(fn: Callable[..., Any]) -> bool:
    """True for a 4-argument term ``(completions, references, prompts, infos)``; a `RewardFn`
    or `rewards.Reward` takes ``(completions, references, prompts)``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 4


def _call_term(term: Term, takes_infos: bool, completions, references, prompts, infos) -> np.ndarray:
    values = term(completions, references, prompts, infos) if takes_infos else term(completions, references, prompts)
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.shape != (len(completions),):
        raise ValueError(f"reward term {term!r} returned {values.shape[0]} values for {len(completions)} episodes")
    return values


class LengthTerm:
    """Completion length per episode: generated tokens (``info["episode"]["l"]``) or characters.
    Use with a negative weight as a length penalty. With ``below=N`` the term is instead 1 for
    completions shorter than N (0 otherwise): with a negative weight, a minimum-length penalty
    that keeps empty or cut-short continuations from winning."""

    def __init__(self, unit: str = "tokens", below: int | None = None) -> None:
        if unit not in ("tokens", "chars"):
            raise ValueError(f"unit must be 'tokens' or 'chars', got {unit!r}")
        self.unit, self.below = unit, below

    def __call__(self, completions, references, prompts, infos) -> np.ndarray:
        if self.unit == "chars":
            lengths = np.array([len(c) for c in completions], dtype=np.float32)
        else:
            lengths = np.array([info["episode"]["l"] for info in infos], dtype=np.float32)
        return lengths if self.below is None else (lengths < self.below).astype(np.float32)

    def __repr__(self) -> str:
        return f"LengthTerm(unit={self.unit!r}, below={self.below!r})"


class OverlongTerm:
    """DAPO's soft overlong punishment (Yu et al., 2025, Eq. 13; TRL's
    ``get_soft_overlong_punishment``), on generated tokens |y| (``info["episode"]["l"]``):
    0 for |y| ≤ L_max − L_cache, ((L_max − L_cache) − |y|) / L_cache up to L_max, −1 beyond.
    Added with weight 1 (``{type: overlong, max_length: L_max, cache: L_cache}``), it penalises
    completions that run into the budget instead of ending, without rewarding short ones."""

    def __init__(self, max_length: int, cache: int) -> None:
        if max_length < 1 or not 0 < cache <= max_length:
            raise ValueError(
                f"overlong shaping needs max_length >= 1 and 0 < cache <= max_length, got "
                f"max_length={max_length}, cache={cache} (max_length is usually the env's max_new_tokens)"
            )
        self.max_length, self.cache = int(max_length), int(cache)

    def __call__(self, completions, references, prompts, infos) -> np.ndarray:
        lengths = np.array([info["episode"]["l"] for info in infos], dtype=np.float32)
        start = self.max_length - self.cache
        penalty = np.where(lengths <= start, 0.0, (start - lengths) / self.cache)
        return np.where(lengths > self.max_length, -1.0, penalty).astype(np.float32)

    def __repr__(self) -> str:
        return f"OverlongTerm(max_length={self.max_length}, cache={self.cache})"


class InfoTerm:
    """A numeric field of each ended episode's info (``default`` when absent): the hook for
    costs an env reports itself, e.g. ``InfoTerm("pauses")`` with a negative weight."""

    def __init__(self, key: str, default: float = 0.0) -> None:
        self.key, self.default = key, float(default)

    def __call__(self, completions, references, prompts, infos) -> np.ndarray:
        return np.array([float(info.get(self.key, self.default)) for info in infos], dtype=np.float32)

    def __repr__(self) -> str:
        return f"InfoTerm(key={self.key!r})"


class ScoreGate:
    """``term`` on the episodes whose task score (``info["score"]``) is at least ``min_score``, 0 on
    the others (where it is not computed). E.g. a discriminator among programs that compile only
    (``min_score`` = the compile credit): between two programs that both fail, it makes no
    preference, so it cannot rank one failure above another."""

    def __init__(self, term: Term, min_score: float) -> None:
        self.term, self.min_score = term, float(min_score)
        self._takes_infos = _takes_infos(term)

    def __call__(self, completions, references, prompts, infos) -> np.ndarray:
        keep = [i for i, info in enumerate(infos) if float(info.get("score", -np.inf)) >= self.min_score]
        values = np.zeros(len(completions), dtype=np.float32)
        if keep:
            pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
            values[keep] = _call_term(
                self.term, self._takes_infos, pick(completions), pick(references), pick(prompts), pick(infos)
            )
        return values

    def __repr__(self) -> str:
        return f"ScoreGate({self.term!r}, min_score={self.min_score})"


# -- transforms ----------------------------------------------------------------------------------
class ReplaceReward(Transform):
    """Replace the reward by another one, e.g. ``ReplaceReward(rewards.make("gsm8k-format"))``.
    The task score stays in ``info["score"]``; the new reward is also logged as component ``name``."""

    def __init__(self, reward: Term, name: str | None = None) -> None:
        if not callable(reward):
            raise TypeError(f"ReplaceReward needs a callable reward, got {type(reward).__name__}")
        self.reward, self.name = reward, name or getattr(reward, "name", "replaced")
        self._takes_infos = _takes_infos(reward)

    def __call__(self, scores, completions, references, prompts, infos):
        values = _call_term(self.reward, self._takes_infos, completions, references, prompts, infos)
        return values, {self.name: values}


class AddTerms(Transform):
    """Add weighted terms: ``reward + Σ weight · term(...)``; each weighted term is a component.

    :param terms: ``{name: (term, weight)}`` or ``{name: term}`` (weight 1). A term is a
        `rewards.Reward` / ``RewardFn`` ``(completions, references, prompts)`` or a 4-argument
        callable that also gets the infos (`LengthTerm`, `InfoTerm`, a per-pause cost...).
    """

    def __init__(self, terms: Mapping[str, Term | tuple[Term, float]]) -> None:
        self.terms: dict[str, tuple[Term, float, bool]] = {}
        for name, spec in terms.items():
            term, weight = spec if isinstance(spec, tuple) else (spec, 1.0)
            if not callable(term):
                raise TypeError(f"term {name!r} is not callable: {term!r}")
            self.terms[name] = (term, float(weight), _takes_infos(term))

    def __call__(self, scores, completions, references, prompts, infos):
        total = np.asarray(scores, dtype=np.float32).copy()
        components: Components = {}
        for name, (term, weight, takes_infos) in self.terms.items():
            components[name] = weight * _call_term(term, takes_infos, completions, references, prompts, infos)
            total += components[name]
        return total, components


class Scale(Transform):
    """Multiply the reward by ``factor``."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def __call__(self, scores, completions, references, prompts, infos):
        return np.asarray(scores, dtype=np.float32) * np.float32(self.factor), {}


class Clip(Transform):
    """Clip the reward to ``[low, high]`` (``None``: unbounded on that side)."""

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        if low is not None and high is not None and low > high:
            raise ValueError(f"Clip needs low <= high, got {low} > {high}")
        self.low, self.high = low, high

    def __call__(self, scores, completions, references, prompts, infos):
        scores = np.asarray(scores, dtype=np.float32)
        if self.low is None and self.high is None:
            return scores, {}
        return np.clip(scores, self.low, self.high).astype(np.float32), {}


class Normalize(Transform):
    """Normalize by running statistics of the rewards seen so far (this batch included):
    ``(r - mean) / sqrt(var + epsilon)``, or ``r / sqrt(var + epsilon)`` with ``center=False``.

    :param clip: clip the normalized reward to ``[-clip, clip]`` (``None``: off).
    :param update: update the statistics (turn off to freeze them, e.g. for evaluation).

    The statistics are state: `state_dict`/`load_state_dict`, and `VecRewardWrapper.get_state`
    includes them, so a checkpoint resumes with the same normalization.

    Data parallel (``torchrun``): `sync` merges the moments every rank gathered since the last
    sync into the statistics of the last sync, in rank order, so after it every rank holds the same
    statistics, those of all ranks' rewards. The agents call it once per iteration, after the
    rollout; within a rollout each rank also folds in its own batches as they end, as one process
    does.
    """

    def __init__(
        self, epsilon: float = 1e-8, clip: float | None = None, center: bool = True, update: bool = True
    ) -> None:
        self.epsilon, self.clip, self.center, self.update = float(epsilon), clip, center, update
        self.mean, self.var, self.count = 0.0, 1.0, 0
        self._synced = (0.0, 1.0, 0)  # (mean, var, count) at the last sync
        self._pending = (0.0, 1.0, 0)  # moments of the batches seen since then

    @staticmethod
    def _merge(a: tuple[float, float, int], b: tuple[float, float, int]) -> tuple[float, float, int]:
        # Chan et al.'s parallel update: the moments (mean, var, count) of b merged into a's.
        (mean, var, count), (b_mean, b_var, n) = a, b
        if n == 0:
            return mean, var, count
        total = count + n
        delta = b_mean - mean
        m2 = var * count + b_var * n + delta**2 * count * n / total
        return mean + delta * n / total, m2 / total, total

    def _update(self, x: np.ndarray) -> None:
        batch = (float(x.mean()), float(x.var()), x.size)
        self.mean, self.var, self.count = self._merge((self.mean, self.var, self.count), batch)
        self._pending = self._merge(self._pending, batch)

    def __call__(self, scores, completions, references, prompts, infos):
        x = np.asarray(scores, dtype=np.float64)
        if self.update and x.size:
            self._update(x)
        out = ((x - self.mean) if self.center else x) / np.sqrt(self.var + self.epsilon)
        if self.clip is not None:
            out = np.clip(out, -self.clip, self.clip)
        return out.astype(np.float32), {}

    def sync(self, all_gather: Callable[[Any], list[Any]]) -> None:
        """Merge every rank's moments since the last sync (``all_gather(obj)`` returns the list of
        every rank's ``obj``, as `torch.distributed.all_gather_object`); a collective."""
        stats = self._synced
        for pending in all_gather(self._pending):
            stats = self._merge(stats, tuple(pending))
        self.mean, self.var, self.count = stats
        self._synced, self._pending = stats, (0.0, 1.0, 0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "var": self.var,
            "count": self.count,
            "synced": list(self._synced),
            "pending": list(self._pending),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
        synced = state.get("synced", (self.mean, self.var, self.count))  # states written before sync existed
        pending = state.get("pending", (0.0, 1.0, 0))
        self._synced = (float(synced[0]), float(synced[1]), int(synced[2]))
        self._pending = (float(pending[0]), float(pending[1]), int(pending[2]))


class Compose(Transform):
    """Apply transforms in order; components of later transforms win on equal names."""

    def __init__(self, transforms: Sequence[RewardTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, scores, completions, references, prompts, infos):
        components: Components = {}
        for transform in self.transforms:
            scores, parts = transform(scores, completions, references, prompts, infos)
            components.update(parts)
        return np.asarray(scores, dtype=np.float32), components

    def __len__(self) -> int:
        return len(self.transforms)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): _state_of(t) for i, t in enumerate(self.transforms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, transform in enumerate(self.transforms):
            if hasattr(transform, "load_state_dict") and str(i) in state:
                transform.load_state_dict(state[str(i)])

    def sync(self, all_gather: Callable[[Any], list[Any]]) -> None:
        """`sync` every transform that has running statistics (a collective: same order on every rank)."""
        for transform in self.transforms:
            if hasattr(transform, "sync"):
                transform.sync(all_gather)


# -- the shared application ----------------------------------------------------------------------
def apply_transform(
    transform: RewardTransform, rewards: np.ndarray, infos: Sequence[dict[str, Any]], rows: Sequence[int]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Transform the rewards of ended ``rows`` (one call for all of them); other rows untouched.

    Returns new rewards (float32) and infos; the infos of ``rows`` are copies with
    ``reward_components`` (inner wrappers' components kept, ``"score"`` = raw task score) and
    ``episode["r"]`` set to the new reward.
    """
    rewards = np.array(rewards, dtype=np.float32)  # a copy: the caller's array is left alone
    infos = list(infos)
    rows = [int(r) for r in rows]
    if not rows:
        return rewards, infos
    ended = [infos[r] for r in rows]
    new, components = transform(
        rewards[rows],
        [i["completion"] for i in ended],
        [i.get("reference") for i in ended],
        [i.get("prompt", "") for i in ended],
        ended,
    )
    new = np.asarray(new, dtype=np.float32).reshape(-1)
    if new.shape != (len(rows),):
        raise ValueError(f"reward transform returned {new.shape[0]} rewards for {len(rows)} episodes")
    for k, row in enumerate(rows):
        info = dict(infos[row])
        parts = dict(info.get("reward_components", {}))
        parts.setdefault("score", float(info.get("score", rewards[row])))
        parts.update({name: float(np.asarray(values).reshape(-1)[k]) for name, values in components.items()})
        info["reward_components"] = parts
        if "episode" in info:
            info["episode"] = {**info["episode"], "r": float(new[k])}
        infos[row] = info
        rewards[row] = new[k]
    return rewards, infos


class RewardWrapper(gym.Wrapper):
    """Apply a `RewardTransform` on the step that ends an episode of a single `TokenEnv`."""

    def __init__(self, env: gym.Env, transform: RewardTransform) -> None:
        super().__init__(env)
        self.transform = transform

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if (terminated or truncated) and "completion" in info:
            rewards, infos = apply_transform(self.transform, np.array([reward]), [info], [0])
            reward, info = float(rewards[0]), infos[0]
        return obs, reward, terminated, truncated, info


class VecRewardWrapper(VecEnvWrapper):
    """Apply a `RewardTransform` to the rows of a `TokenVecEnv` that ended in a step, batched
    (one call for all ended rows). Waiting lockstep rows are untouched.

    Everything else forwards to the wrapped env (``get_sampler_state``, ``task``...), except
    ``get_state``/``set_state`` (also through ``env_method``), which add the transform's state
    under ``"reward_transforms"`` so checkpoints keep e.g. `Normalize` statistics. The env's own
    keys are unchanged, so a plain `TokenVecEnv` still loads such a state and vice versa.
    """

    _OWN_METHODS = ("get_state", "set_state")

    def __init__(self, venv: VecEnv, transform: RewardTransform) -> None:
        super().__init__(venv)
        self.transform = transform

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        rows = [r for r in np.flatnonzero(dones) if "completion" in infos[r] and not infos[r].get("waiting")]
        rewards, infos = apply_transform(self.transform, rewards, infos, rows)
        return obs, rewards, dones, infos

    def get_state(self) -> dict[str, Any]:
        state = dict(self.venv.env_method("get_state", indices=[0])[0])
        state["reward_transforms"] = [*state.get("reward_transforms", []), _state_of(self.transform)]
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        stack = list(state.get("reward_transforms", []))
        if stack and hasattr(self.transform, "load_state_dict"):
            self.transform.load_state_dict(stack.pop())  # the outermost wrapper's state is last
        self.venv.env_method("set_state", {**state, "reward_transforms": stack}, indices=[0])

    def sync_statistics(self, all_gather: Callable[[Any], list[Any]]) -> None:
        """Make this wrapper's running statistics (`Normalize`) the same on every rank, then the
        wrapped env's. A collective; the agents call it once per iteration on the outermost env."""
        if hasattr(self.transform, "sync"):
            self.transform.sync(all_gather)
        self.venv.sync_statistics(all_gather)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        if method_name in self._OWN_METHODS:
            return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]
        return self.venv.env_method(method_name, *method_args, indices=indices, **method_kwargs)


# -- from configuration --------------------------------------------------------------------------
def _reward_from_spec(spec: Any, kwargs: Mapping[str, Any] | None = None) -> Any:
    import rewards

    return rewards.make(spec, **dict(kwargs or {})) if isinstance(spec, str) else spec


def _term_from_spec(name: str, spec: Any) -> tuple[Term, float]:
    if not isinstance(spec, Mapping):
        return _reward_from_spec(spec), 1.0
    spec = dict(spec)
    weight = float(spec.pop("weight", 1.0))
    min_score = spec.pop("min_score", None)
    if "reward" in spec:
        term = _reward_from_spec(spec.pop("reward"), spec.pop("kwargs", None))
    elif spec.get("term") == "length":
        spec.pop("term")
        term = LengthTerm(**spec)
        spec = {}
    elif spec.get("term") == "info":
        spec.pop("term")
        term = InfoTerm(**spec)
        spec = {}
    else:
        raise ValueError(f"term {name!r}: give 'reward: <rewards name>' or 'term: length|info', got {spec}")
    if spec:
        raise ValueError(f"term {name!r}: unexpected keys {sorted(spec)}")
    return (term if min_score is None else ScoreGate(term, min_score)), weight


def _replace(reward: Any, kwargs: Mapping[str, Any] | None = None, name: str | None = None) -> ReplaceReward:
    return ReplaceReward(_reward_from_spec(reward, kwargs), name=name)


def _add_terms(terms: Mapping[str, Any]) -> AddTerms:
    return AddTerms({name: _term_from_spec(name, spec) for name, spec in dict(terms).items()})


def _overlong(max_length: int, cache: int, name: str = "overlong") -> AddTerms:
    return AddTerms({name: OverlongTerm(max_length, cache)})


_BUILDERS: dict[str, Callable[..., Transform]] = {
    "replace": _replace,
    "add_terms": _add_terms,
    "scale": Scale,
    "clip": Clip,
    "normalize": Normalize,
    "overlong": _overlong,
}


def from_config(specs: Sequence[Mapping[str, Any]] | None) -> Compose:
    """Build a `Compose` from plain dicts, applied in order. Types and their keys:

    * ``{type: replace, reward: NAME, kwargs: {...}, name: ...}``
    * ``{type: add_terms, terms: {NAME: {reward: REWARD_NAME, kwargs: {...}, weight: W}
      | {term: length, unit: tokens|chars, weight: W} | {term: info, key: KEY, weight: W}}}``;
      any term may add ``min_score: S`` (`ScoreGate`: the term only where the task score ≥ S)
    * ``{type: scale, factor: F}``, ``{type: clip, low: L, high: H}``,
      ``{type: normalize, epsilon: E, clip: C, center: true, update: true}``
    * ``{type: overlong, max_length: L_MAX, cache: L_CACHE}``: DAPO's soft overlong punishment
      (`OverlongTerm`), added as the component ``overlong``

    ``REWARD_NAME`` is any `rewards.make` name (e.g. ``gsm8k-format``).
    """
    transforms: list[Transform] = []
    for i, spec in enumerate(specs or []):
        if not isinstance(spec, Mapping):
            raise ValueError(f"reward_wrappers[{i}] must be a mapping with a 'type', got {spec!r}")
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in _BUILDERS:
            raise ValueError(f"reward_wrappers[{i}]: unknown type {kind!r}; types: {sorted(_BUILDERS)}")
        try:
            transforms.append(_BUILDERS[kind](**spec))
        except TypeError as err:
            raise ValueError(f"reward_wrappers[{i}] ({kind}): {err}") from err
    return Compose(transforms)


__all__ = [
    "AddTerms",
    "Clip",
    "Compose",
    "InfoTerm",
    "LengthTerm",
    "Normalize",
    "OverlongTerm",
    "ReplaceReward",
    "RewardTransform",
    "RewardWrapper",
    "Scale",
    "ScoreGate",
    "Transform",
    "VecRewardWrapper",
    "apply_transform",
    "from_config",
]
