"""Train a language model on a token-level task: ``python experiments/run_ppo.py``.

With no arguments: PPO on SmolLM2-135M-Instruct (embedded) + LoRA, steering continuations of toxic
RealToxicityPrompts prompts away from toxicity (``lm_envs/Toxicity-v0``), about 5 minutes on a
2-core CPU; ``env.id=lm_envs/GSM8K-v0`` (or any registered id) picks another task. Pick the
algorithm with ``agent=ppo|grpo|rloo|reinforce|reinforce_pp`` (online), a recipe
``agent=gspo|dapo|reinforce_pp_baseline``, or ``agent=sft|star|dpo|kto`` (rounds of learning from
scored samples, one round per iteration), or ``agent=reward_model`` (a reward model from preference
pairs: ``train_reward_model.py``), a preset with ``experiment=NAME``, and override any key
with dotted overrides (a misspelt key is an error), e.g.
``python experiments/run_ppo.py agent=grpo agent.learning_rate=1e-5 output_dir=runs/a``.
Continue a killed run with ``resume=true``. Data parallel on N processes with
``torchrun --nproc_per_node=N experiments/run_ppo.py ...`` (sizes are per rank; rank 0 logs,
evaluates and writes). A thin script: composition only, no algorithm logic.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `config` when run as a script

import torch  # noqa: E402
from config import compose  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def build(cfg, tokenizer, model, eval_env: bool = False, reward=None):
    """The train env, or with ``eval_env`` the evaluation env (``env.eval_kwargs`` over ``env.kwargs``);
    ``reward``: a reward object to use instead of building the task's own (see `shared_reward`)."""
    import lm_envs
    from agents import distributed
    from lm_envs.reward_wrappers import VecRewardWrapper, from_config

    kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    if eval_env:
        kwargs.update(OmegaConf.to_container(cfg.env.eval_kwargs, resolve=True))
    if reward is not None:
        kwargs["reward"] = reward
    if cfg.data_dir:
        kwargs["data_dir"] = cfg.data_dir
    # Training rows come in groups of completions_per_prompt; evaluation gives each prompt one row.
    k = cfg.env.get("completions_per_prompt", 1)
    group = {} if eval_env else {"completions_per_prompt": k}
    # Rank r's prompt slots are slots [r·S, (r+1)·S) of one big env of S·world slots.
    offset = 10_000 if eval_env else distributed.rank() * (cfg.env.num_envs // k)
    curriculum = None if eval_env else curriculum_kwargs(cfg)  # reasoning-gym's difficulty curriculum
    make = lm_envs.make_vec
    if curriculum is not None:
        from lm_envs.ecosystem.reasoning_gym import make_curriculum_vec

        make = functools.partial(make_curriculum_vec, **curriculum)
    env = make(
        cfg.env.id,
        cfg.env.num_envs,
        tokenizer,
        vocab_size=model.config.vocab_size,
        seed=cfg.seed + offset,
        **group,
        **kwargs,
    )
    # Both envs get the same wrappers; evaluation reports the raw task score (info["score"]).
    wrappers = OmegaConf.to_container(cfg.env.reward_wrappers, resolve=True) if cfg.env.get("reward_wrappers") else []
    return VecRewardWrapper(env, from_config(wrappers)) if wrappers else env


def curriculum_kwargs(cfg) -> dict | None:
    """``env.curriculum``'s options for `make_curriculum_vec` when ``enabled`` (``None`` when not);
    an error when the env is not a reasoning-gym id."""
    options = OmegaConf.to_container(cfg.env.get("curriculum") or {}, resolve=True)
    if not options.pop("enabled", False):
        return None
    if not str(cfg.env.id).startswith("reasoning_gym/"):
        raise SystemExit(
            f"env.curriculum.enabled=true needs a reasoning_gym/<task>-v0 env, not env.id={cfg.env.id}; "
            "turn it off with env.curriculum.enabled=false"
        )
    return options


def shared_reward(cfg, env):
    """The train env's reward object, for the evaluation env to score with too, unless
    ``env.eval_kwargs`` chooses its own ``reward`` / ``reward_kwargs``: one code sandbox (and one
    start-up canary) or one classifier per run instead of two. The two envs never score at the same
    time (evaluation runs between iterations)."""
    chosen = cfg.env.get("eval_kwargs") or {}
    if "reward" in chosen or "reward_kwargs" in chosen:
        return None
    return env.task.reward


def round_kwargs(cfg, cls, env) -> dict:
    """Constructor arguments that are code, not config: STaR's hinted env for rationalization."""
    from agents.base import agent_parameters

    if "hint_env_fn" not in agent_parameters(cls) or not cfg.agent.get("rationalize"):
        return {}
    from functools import partial

    from lm_envs.hints import DEFAULT_HINT_TEMPLATE, hinted_vec_env
    from lm_envs.reward_wrappers import VecRewardWrapper, from_config

    wrappers = OmegaConf.to_container(cfg.env.reward_wrappers, resolve=True) if cfg.env.get("reward_wrappers") else []
    wrap = (lambda hinted: VecRewardWrapper(hinted, from_config(wrappers))) if wrappers else None
    template = cfg.env.get("hint_template") or DEFAULT_HINT_TEMPLATE
    return {"hint_env_fn": partial(hinted_vec_env, env, hint_template=template, wrap=wrap)}


def agent_class(cfg):
    """The agent class ``cfg.agent.name`` names (or, for a recipe such as ``gspo``, its
    ``agent.algorithm``), after checking every agent key is one it takes."""
    from agents import AGENTS
    from agents.base import agent_parameters

    name = cfg.agent.get("algorithm") or cfg.agent.name
    if name not in AGENTS:
        raise SystemExit(f"unknown agent {name!r}; known: {sorted(AGENTS)}")
    cls = AGENTS[name]
    unknown = sorted(set(cfg.agent) - agent_parameters(cls) - {"name", "algorithm"})
    if unknown:
        raise SystemExit(
            f"agent {name!r} ({cls.__name__}) does not take {unknown}; its keys: "
            f"{sorted(agent_parameters(cls) - {'policy_kwargs', 'seed', 'device', 'tensorboard_log'})}"
        )
    group = cfg.env.get("completions_per_prompt", 1)
    if cfg.env.num_envs % group:
        raise SystemExit(f"env.num_envs={cfg.env.num_envs} must be a multiple of env.completions_per_prompt={group}")
    return cls


def prepare(cfg):
    """Build (agent, train env, eval env, resumed-from checkpoint or None) from a composed config."""
    from agents import distributed, latest_checkpoint
    from policies import load_lm

    cls = agent_class(cfg)
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    try:
        model, tokenizer = load_lm(cfg.policy.model, dtype=cfg.policy.dtype)
    except FileNotFoundError as err:
        if cfg.get("experiment"):  # a preset may start from an earlier step's output; its file says which step
            raise SystemExit(
                f"{err}\nexperiment={cfg.experiment} runs from policy.model={cfg.policy.model}; when that "
                f"is an earlier step's output, experiments/configs/experiment/{cfg.experiment}.yaml says "
                f"which step writes it. Or pass policy.model=... (e.g. smollm2-135m-instruct)"
            ) from None
        raise
    policy_kwargs = OmegaConf.to_container(cfg.policy, resolve=True)
    policy_class = policy_kwargs.pop("class", None) or "CausalLMPolicy"
    policy_kwargs.update(policy_kwargs.pop("pause", None) or {})
    if policy_class == "PauseLMPolicy":  # the envs' action space must already hold the pause token
        from policies import PAUSE_TOKEN, add_pause_token

        add_pause_token(model, tokenizer, policy_kwargs.get("pause_token", PAUSE_TOKEN))
    env = build(cfg, tokenizer, model)
    eval_env = build(cfg, tokenizer, model, eval_env=True, reward=shared_reward(cfg, env))
    policy_kwargs["model"] = model
    device = policy_kwargs.pop("device", "auto")
    agent_kwargs = OmegaConf.to_container(cfg.agent, resolve=True)
    agent_kwargs.pop("name")
    agent_kwargs.pop("algorithm", None)  # a recipe's class (agent_class)
    code = round_kwargs(cfg, cls, env)  # STaR's hinted env: given again to load, it is not saved
    agent_kwargs.update(code)
    checkpoints = out / "checkpoints"
    resume_from = latest_checkpoint(checkpoints) if cfg.resume else None
    main_process = distributed.is_main_process()
    if cfg.resume and resume_from is None and main_process:
        print(f"resume=true but no checkpoint in {checkpoints}; starting fresh", file=sys.stderr)
    if resume_from is not None:
        if main_process:
            print(f"resuming from {resume_from}", file=sys.stderr)
        agent = cls.load(
            resume_from,
            env=env,
            model=model,
            device=device,
            tensorboard_log=str(out / "tb"),
            verbose=cfg.agent.verbose,
            **code,
        )
    else:
        agent = cls(
            policy_class,
            env,
            policy_kwargs=policy_kwargs,
            seed=cfg.seed,
            device=device,
            tensorboard_log=str(out / "tb"),
            **agent_kwargs,
        )
    return agent, env, eval_env, resume_from


def attach_engine(cfg, agent, out: Path):
    """The inference engine ``rollout.engine`` asks for, given to the agent (None for ``hf``)."""
    rollout = cfg.get("rollout") or {}
    name = rollout.get("engine", "hf")
    if name == "hf":
        return None
    if name != "vllm":
        raise SystemExit(f"rollout.engine must be hf or vllm, got {name!r}")
    if not hasattr(agent, "use_engine"):
        raise SystemExit(
            f"rollout.engine=vllm serves the online agents (ppo, grpo, rloo, reinforce, reinforce_pp); "
            f"agent={cfg.agent.name} generates with the policy: use rollout.engine=hf"
        )
    from agents.engine.deploy import make_engine

    engine = make_engine(
        agent.policy,
        deployment=rollout.get("deployment", "server"),
        server_url=rollout.get("server_url"),
        engine_python_path=rollout.get("engine_python"),
        seed=cfg.seed,
        max_model_len=rollout.get("max_model_len", 2048),
        kv_cache_gb=rollout.get("kv_cache_gb", 1.0),
        log_path=str(out / "engine.log"),
    )
    agent.use_engine(engine)
    return engine


def main(argv: list[str]) -> dict:
    from agents import distributed
    from agents.checkpoint import atomic_write_text

    started = time.perf_counter()
    layout = distributed.init_from_env()  # torchrun / accelerate launch; None for one process
    main_process = distributed.is_main_process()
    cfg = compose(argv)
    cfg.world_size = distributed.world_size()
    out = Path(cfg.output_dir)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
        print(
            f"distributed: backend={layout['backend']} ranks={layout['world_size']} threads/rank={layout['threads']}"
            if layout
            else "single process",
            file=sys.stderr,
        )
    agent, env, eval_env, resume_from = prepare(cfg)
    engine = attach_engine(cfg, agent, out)
    try:
        return _run(cfg, agent, eval_env, resume_from, out, started)
    finally:
        if engine is not None:
            engine.close()


def _run(cfg, agent, eval_env, resume_from, out: Path, started: float) -> dict:
    """Evaluate, train, save, evaluate again and write the report."""
    from stable_baselines3.common.callbacks import CallbackList

    from agents import CheckpointEveryIterations, EvalEveryIterations, distributed, evaluate_policy
    from agents.callbacks import StopAfterSeconds
    from agents.checkpoint import write_json

    main_process = distributed.is_main_process()
    checkpoints = out / "checkpoints"

    def evaluate(tag: str) -> dict:
        has_reference = agent.policy.uses_lora or agent.policy.reference_model is not None
        summary, samples = evaluate_policy(
            agent.policy,
            eval_env,
            cfg.env.eval_episodes,
            deterministic=cfg.env.eval_deterministic,
            reference_stats=has_reference,
        )
        write_json(out / f"eval_{tag}.json", summary)
        write_json(out / f"samples_{tag}.json", samples)
        print(f"eval {tag}: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()), file=sys.stderr)
        return summary

    with agent.policy.gathered(reference=True):  # FSDP: every rank gathers the weights, rank 0 evaluates
        if main_process and (resume_from is None or not (out / "eval_before.json").exists()):
            evaluate("before")
    callbacks = [CheckpointEveryIterations(checkpoints, every=cfg.checkpoint_every)]
    time_limit = StopAfterSeconds(60 * cfg.time_limit_minutes, verbose=1) if cfg.get("time_limit_minutes") else None
    if time_limit is not None:
        callbacks.append(time_limit)
    if curriculum_kwargs(cfg) is not None:  # curriculum/level, success_rate, changes in the logs
        from lm_envs.ecosystem.reasoning_gym import CurriculumLogCallback

        callbacks.append(CurriculumLogCallback())
    token_log = None
    if cfg.report_episodes != 0:  # per-token quantities of a few episodes per iteration, for the report
        from agents.token_log import TokenLogCallback

        token_log = TokenLogCallback(out / "tokens", episodes=cfg.report_episodes)
        callbacks.append(token_log)
    if cfg.eval_every:
        callbacks.append(
            EvalEveryIterations(
                eval_env,
                cfg.eval_every,
                cfg.env.eval_episodes,
                on_result=lambda it, summary: write_json(out / f"eval_iter_{it:06d}.json", summary),
            )
        )
    # The budget is the iteration count, from the start of the run: a resumed run does the rest,
    # and schedules follow the uninterrupted run's progress.
    agent.learn(
        total_iterations=cfg.iterations,
        callback=CallbackList(callbacks),
        progress_bar=cfg.progress_bar,
        reset_num_timesteps=resume_from is None,
        tb_log_name=cfg.agent.name,
    )
    agent.save(checkpoints / f"iter_{agent.iteration:06d}")  # collective: every rank's state, rank 0 writes
    if getattr(agent.policy, "sharded", False):  # FSDP: the final weights are gathered (collective), rank 0
        agent.finalize(out / "final")  # writes them, and evaluates with every rank's weights
        with agent.policy.gathered(reference=True):
            summary = evaluate("after") if main_process else {}
    if not main_process:
        return {}
    if time_limit is not None and time_limit.fired:
        print(
            f"safety stop: time_limit_minutes={cfg.time_limit_minutes} fired at iteration {agent.iteration} of "
            f"{cfg.iterations}",
            file=sys.stderr,
        )
    write_json(
        out / "run.json",
        {
            "agent": cfg.agent.name,
            "iterations_done": agent.iteration,
            "iterations_budget": cfg.iterations,
            "world_size": cfg.world_size,
            "time_limit_fired": bool(time_limit is not None and time_limit.fired),
        },
    )
    if not getattr(agent.policy, "sharded", False):
        agent.finalize(out / "final")  # the agent's own final form (a plain model dir for SFT, STaR, DPO, KTO)
        summary = evaluate("after")
    from agents.evaluation import before_after_table

    before = json.loads((out / "eval_before.json").read_text())
    print(
        f"\nheld-out evaluation ({cfg.env.eval_episodes} episodes), before -> after training:\n"
        + before_after_table(before, summary),
        file=sys.stderr,
    )
    if cfg.report:
        write_report(out, time.perf_counter() - started, token_log.seconds if token_log is not None else 0.0)
    print(f"done: outputs in {out} (tensorboard --logdir {out / 'tb'})", file=sys.stderr)
    return summary


def write_report(out: Path, run_seconds: float, logging_seconds: float = 0.0) -> None:
    """``out/report.html`` (experiments/report.py). Prints what the report cost, with the token
    log's ``logging_seconds``, as a share of the run. A report that fails does not fail the run,
    whose outputs are all written by now: it says how to retry."""
    start = time.perf_counter()
    try:
        import report

        path = report.write_report(out)
    except Exception as err:  # noqa: BLE001 - the run itself succeeded
        print(
            f"report: failed ({type(err).__name__}: {err}); retry with python experiments/report.py {out}",
            file=sys.stderr,
        )
        return
    seconds = time.perf_counter() - start
    share = 100 * (seconds + logging_seconds) / (run_seconds + seconds)
    print(
        f"report: {path} ({seconds:.1f}s to write, {logging_seconds:.1f}s of token logging: {share:.1f}% of the run)",
        file=sys.stderr,
    )


def cli(argv: list[str]) -> dict:
    """`main`, then leave the process group (torchrun): every rank together after a run that
    finished, at once after one that failed."""
    if "agent=reward_model" in argv:  # not an RL agent: its own script and config (configs/reward_model.yaml)
        import train_reward_model

        return train_reward_model.main([arg for arg in argv if arg != "agent=reward_model"])
    from agents import distributed

    try:
        summary = main(argv)
        # Rank 0 still evaluates and writes after the other ranks are done; a gloo rank that tore
        # its process group down meanwhile was seen to abort at exit.
        distributed.barrier()
        return summary
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    cli(sys.argv[1:])
