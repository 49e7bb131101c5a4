"""`EpisodeBatch`: the token-level MDP for ``n`` rows at once, as numpy arrays.

Both `TokenEnv` (n = 1) and `TokenVecEnv` (n = batch) are thin shells over this class, so the
transition logic exists once. `EpisodeConfig` is the one list of episode settings they share.

Row layout (width ``L = max_prompt_tokens + max_new_tokens + max_injected_tokens``)::

    [ pad ... pad | prompt tokens ][ policy and env tokens, contiguous ... | pad ... ]
    0                             P                     P + completion_length        L

Prompts are left-padded to ``P = max_prompt_tokens``. After ``P`` each row is *compact*: the
tokens the policy chose and the tokens the env injected (tool results, feedback turns) follow
one another with no gaps, ``completion_length`` of them. ``attention_mask`` marks real tokens;
``policy_mask`` marks the policy's own (its actions); injected tokens have attention 1 and
policy 0. In a single-turn task nothing is injected, so generated token ``t`` sits at ``P + t``.
A policy that keeps one KV cache for a lockstep batch maps this layout to its own cache columns
(`policies.CausalLMPolicy.act` puts masked holes where rows injected different amounts).

Ends of episodes:

* **terminated**: the policy ended its last turn (EOS or a stop string), or the task's reply
  ended the episode (`lm_envs.tasks.turns.Reply` with ``text=None``);
* **truncated**: a budget ran out: ``max_new_tokens`` (the policy's tokens, all turns),
  ``max_turn_tokens`` on the last allowed turn, or ``max_injected_tokens`` (an injection that
  does not fit ends the episode instead of being cut).

By concern: `config` (`EpisodeConfig`, `observation_space`), `batch` (`EpisodeBatch`: prompts,
the transition, the finished rows' rewards and infos), `turns` (multi-turn episodes: tool calls,
the task's replies and the tokens injected for them), `overlap` (scoring ended rows in the
background) and `state` (saving and restoring the batch, old checkpoints included).
"""

from __future__ import annotations

from lm_envs.episodes.batch import EpisodeBatch
from lm_envs.episodes.config import EpisodeConfig, observation_space
from lm_envs.episodes.turns import _takes_keyword

__all__ = ["EpisodeBatch", "EpisodeConfig", "observation_space", "_takes_keyword"]
