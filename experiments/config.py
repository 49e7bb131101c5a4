"""Config composition for the experiment scripts: base YAML + ``agent=`` group + ``experiment=``
presets + dotted overrides.

``python experiments/run_ppo.py agent=NAME experiment=NAME key.sub=value ...`` composes, in this
order whatever the order on the command line (the Hydra convention, OmegaConf underneath):

1. the base config (``configs/ppo.yaml``);
2. the agent group ``configs/agent/NAME.yaml`` (default ``ppo``, or the last preset's
   ``defaults: [{override /agent: NAME}]``, as in Hydra): its ``agent`` node *replaces*
   the base's, and its other keys (e.g. ``env.completions_per_prompt`` for group agents) merge;
   without any ``experiment=``, the base's ``per_agent.<agent name>`` (the default run's
   tuning) is then merged into ``agent``;
3. each ``experiment=NAME`` preset (``configs/experiment/NAME.yaml``): merged, except its
   ``per_agent`` section, of which only ``per_agent.<agent name>`` is merged into ``agent``;
   a preset's plain ``agent`` keys must be ones every agent takes;
4. the dotted overrides, strictly: a key that none of the layers above defines is an error that
   lists the known keys beside it (free-form nodes: `OPEN_NODES`);
5. the env's own run defaults (`lm_envs.registration.run_defaults` of ``env.id``): its
   ``kwargs`` and ``eval_kwargs`` under whatever the layers above set, and its
   ``reward_wrappers`` unless a layer set them (``env.reward_wrappers=[]`` turns them off). So
   ``env.id=X`` alone gives X's token budget, splits and wrappers.

The chosen agent's name is ``cfg.agent.name``. A *recipe* (``agent=gspo``, ``agent=dapo``,
``agent=reinforce_pp_baseline``) is an agent file whose ``agent.algorithm`` names the agent class
it configures (``grpo``, ``reinforce_pp``).

The other training and evaluation scripts (``evaluate.py``, ``sft_warmup.py``) take the same
style through `compose_script`: their base file (``configs/evaluate.yaml``,
``configs/sft_warmup.yaml``) and dotted overrides, where a key the base file does not have is an
error. ``--help`` on any of them prints the script's summary and its base file, whose comments
document every option.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GROUPS = ("agent", "experiment")


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _load(group: str, name: str) -> DictConfig:
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown {group} {name!r}; known: {_names(group)}")
    return OmegaConf.load(path)


def help_text(base: str, description: str | None = None, groups: bool = False) -> str:
    """What ``--help`` prints: the script's summary, how to override, and the base file itself."""
    lines = [description.strip(), ""] if description else []
    lines.append(
        f"Options are key=value overrides, dotted for nested keys (env.kwargs.split=test), of\n"
        f"experiments/configs/{base}, shown below with its defaults and comments."
    )
    if groups:
        lines.append(f"Groups: agent=NAME, one of {agents()}; experiment=NAME (repeatable), one of {presets()}.")
    lines += ["", (CONFIG_DIR / base).read_text().rstrip()]
    return "\n".join(lines)


def _maybe_help(argv: Sequence[str], base: str, description: str | None, groups: bool = False) -> None:
    if any(arg in ("-h", "--help") for arg in argv):
        if description is None:  # the running script's docstring
            description = getattr(sys.modules.get("__main__"), "__doc__", None)
        print(help_text(base, description, groups))
        raise SystemExit(0)


def compose_script(
    argv: Sequence[str], base: str, description: str | None = None, open_keys: Sequence[str] = ()
) -> DictConfig:
    """A script's config: ``configs/<base>`` + dotted overrides (``key.sub=value``).

    A key the base file does not have is an error, except under the nodes named in `open_keys`
    (free-form kwargs, e.g. ``env.kwargs``). A mandatory value (``???``) left unset is an error
    that names it. ``--help``/``-h`` prints `help_text` and exits.
    """
    _maybe_help(argv, base, description)
    flags = [arg for arg in argv if arg.startswith("-")]
    if flags:
        raise SystemExit(f"this script takes key=value overrides, not flags: got {flags}; see --help")
    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise SystemExit(f"overrides must look like key.sub=value, got {bad}; see --help")
    cfg = OmegaConf.load(CONFIG_DIR / base)
    OmegaConf.set_struct(cfg, True)
    for key in open_keys:
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(argv)))
    except ConfigKeyError as err:
        raise SystemExit(f"unknown option {err.full_key!r} for experiments/configs/{base}; see --help") from None
    except OmegaConfBaseException as err:
        raise SystemExit(f"bad override: {err}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"set {', '.join(f'{k}=...' for k in missing)} (see --help)")
    return cfg


def compose(argv: Sequence[str], base: str = "ppo.yaml", extra_nodes: dict | None = None) -> DictConfig:
    """The composed config (the layers in the module docstring).

    :param extra_nodes: top-level nodes a script adds to the base with their defaults (e.g.
        ``build_preferences.py``'s ``prefs``), so overrides of their keys are checked like the rest.
    """
    _maybe_help(argv, base, None, groups=True)
    chosen: dict[str, list[str]] = {group: [] for group in GROUPS}
    overrides = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in GROUPS and value:
            chosen[key].append(value)
        else:
            overrides.append(arg)
    bad = [arg for arg in overrides if "=" not in arg]
    if bad:
        raise SystemExit(f"overrides must look like key.sub=value, got {bad}")
    if len(chosen["agent"]) > 1:
        raise SystemExit(f"choose one agent, got agent={chosen['agent']}")
    loaded = [_load("experiment", name) for name in chosen["experiment"]]
    agent_name = "ppo"
    for preset in loaded:  # a preset may name its agent (Hydra's `defaults: [override /agent: X]`)
        for entry in preset.pop("defaults", None) or []:
            if not (isinstance(entry, DictConfig) and set(entry) == {"override /agent"}):
                raise SystemExit(f"a preset's defaults list may only hold `override /agent: NAME`, got {entry}")
            agent_name = entry["override /agent"]
    if chosen["agent"]:
        agent_name = chosen["agent"][0]

    cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / base), extra_nodes or {})
    default_tuning = cfg.pop("per_agent", None)
    group = _load("agent", agent_name)
    # Every layer's agent keys in the agent's internal names (TRL's spellings accepted: agents.names).
    spell = _agent_speller(group.agent.get("algorithm") or agent_name)
    group.agent = spell(group.agent)
    if default_tuning is not None and agent_name in default_tuning:
        default_tuning[agent_name] = spell(default_tuning[agent_name])
    for preset in loaded:
        if preset.get("agent") is not None:
            preset.agent = spell(preset.agent)
        if preset.get("per_agent") is not None and agent_name in preset.per_agent:
            preset.per_agent[agent_name] = spell(preset.per_agent[agent_name])
    overrides = [_spell_override(arg, spell) for arg in overrides]
    cfg.agent = group.agent  # replaces the node: no key of another agent survives
    cfg = OmegaConf.merge(cfg, {k: v for k, v in group.items() if k != "agent"})
    if not chosen["experiment"] and default_tuning is not None and agent_name in default_tuning:
        cfg.agent = OmegaConf.merge(cfg.agent, default_tuning[agent_name])
    for preset in loaded:
        per_agent = preset.pop("per_agent", None)
        cfg = OmegaConf.merge(cfg, preset)
        if per_agent is not None and agent_name in per_agent:
            cfg.agent = OmegaConf.merge(cfg.agent, per_agent[agent_name])
    cfg = _merge_strictly(cfg, overrides, "configs/ppo.yaml, the agent file and the presets")
    apply_env_defaults(cfg)
    cfg.agent.name = agent_name
    cfg.experiment = chosen["experiment"][-1] if chosen["experiment"] else None
    return cfg


def _agent_speller(algorithm: str):
    """A function renaming an agent node's keys to the internal names, for the online agents
    (whose constructors accept `agents.names.ALIASES`); the identity for the others (DPO's
    ``beta`` is its own)."""
    from agents.names import ALIASES, resolve_aliases

    def spell(node: DictConfig) -> DictConfig:
        if node is None or not set(node) & set(ALIASES) or not _accepts_aliases(algorithm):
            return node
        try:
            return OmegaConf.create(resolve_aliases(f"agent {algorithm!r}", OmegaConf.to_container(node)))
        except TypeError as err:
            raise SystemExit(str(err)) from None

    return spell


def _accepts_aliases(algorithm: str) -> bool:
    from agents import AGENTS

    return algorithm in AGENTS and getattr(AGENTS[algorithm].__init__, "accepts_aliases", False)


def _spell_override(arg: str, spell) -> str:
    """``agent.beta=0.1`` → ``agent.kl_coef=0.1`` for an online agent."""
    key, _, value = arg.partition("=")
    head, _, name = key.partition(".")
    if head != "agent" or not name or "." in name:
        return arg
    renamed = list(spell(OmegaConf.create({name: None})))
    return f"agent.{renamed[0]}={value}"


# Nodes whose keys are free-form (checked elsewhere, or kwargs passed through): any key may be set.
OPEN_NODES = ("agent", "env.kwargs", "env.eval_kwargs", "policy.lora", "policy.pause")


def _merge_strictly(cfg: DictConfig, overrides: Sequence[str], where: str) -> DictConfig:
    """``cfg`` + dotted overrides, where a key that no layer defines is an error listing the keys
    that exist beside it (a misspelt ``iteratons=100`` must not be ignored); keys under
    `OPEN_NODES` are free."""
    OmegaConf.set_struct(cfg, True)
    for key in OPEN_NODES:
        node = OmegaConf.select(cfg, key)
        if isinstance(node, DictConfig):
            OmegaConf.set_struct(node, False)
    # ``env.reward_wrappers.0.terms.x.weight=...``: a path through a list is set in place (a merge
    # of ``{"0": ...}`` into a list would fail); the rest merge at once.
    indexed = [o for o in overrides if any(part.isdigit() for part in o.partition("=")[0].split("."))]
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o for o in overrides if o not in indexed]))
        for override in indexed:
            key, _, value = override.partition("=")
            OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"value={value}"])["value"], merge=True)
    except (ConfigKeyError, ConfigAttributeError) as err:
        parent = err.full_key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = sorted(node.keys()) if isinstance(node, DictConfig) else []
        raise SystemExit(
            f"unknown option {err.full_key!r}: no such key in {where}; known keys"
            f"{' under ' + parent if parent else ''}: {known}"
        ) from None
    except OmegaConfBaseException as err:
        raise SystemExit(f"bad override: {err}") from None
    OmegaConf.set_struct(cfg, False)
    return cfg


def apply_env_defaults(cfg: DictConfig) -> None:
    """Fill ``cfg.env`` from the run defaults registered with ``cfg.env.id`` (what is set wins)."""
    import lm_envs  # noqa: F401  (registers the built-in ids)
    from lm_envs.registration import run_defaults

    defaults = run_defaults(cfg.env.id)
    for key in ("kwargs", "eval_kwargs"):
        cfg.env[key] = OmegaConf.merge(defaults[key], cfg.env.get(key) or {})
    if cfg.env.get("reward_wrappers") is None:
        cfg.env.reward_wrappers = defaults["reward_wrappers"]


def presets() -> list[str]:
    return _names("experiment")


def agents() -> list[str]:
    return _names("agent")
