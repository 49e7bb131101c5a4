"""Multi-turn episodes: how a task speaks to the model in the middle of an episode.

A task can answer in two ways, and `lm_envs.episodes.EpisodeBatch` writes what it says into the
row as *injected* tokens (attention 1, ``policy_mask`` 0: context, never actions):

* **Tools, inline.** After every policy token, the text the model wrote since the env last spoke
  is matched against each `Tool`'s pattern, anchored at its end. A match calls the tool, and
  the text it returns is injected right there, e.g. GSM8K's calculator: the model writes
  ``<<48/2=`` and the env writes ``24>>``. Detection is on the decoded text, so a token that
  already carries characters after the call (``=2``) means the model chose to answer itself.
* **Replies, per turn.** When the model ends a turn (EOS, a stop string, or ``max_turn_tokens``),
  the task's ``respond(attempts, references, turns)`` returns one `Reply` per row: text to say
  (usually rendered as a chat turn: the env's message as a user turn, then the assistant
  header) or ``None`` to end the episode, and optionally the attempt's score or the turn's
  reward. A ``respond`` that takes a ``histories`` keyword also gets, per row, the policy's earlier
  turns of the episode (so a stateless game can be replayed to the current position).

**Per-turn rewards.** A reply's ``reward`` is the reward of the turn that just ended (a game's
per-step reward). When any turn of an episode has one, the episode's reward is the *sum* of its
turns' rewards, and the finished episode's info records ``turn_rewards`` (one float per turn, 0
where a turn had none) and ``turn_ends`` (the action index, a 0-based count of the policy's
tokens, of each turn's last action). PPO puts each turn's reward on that token
(`agents.ppo_math.token_rewards`); sequence-level agents use the sum.

Nothing here knows about models or agents; it may import only the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tool:
    """A tool the model can call inline.

    :param name: reported in ``info["tool_calls"]`` counts and docs.
    :param pattern: a regular expression that recognises a finished call at the *end* of the
        model's text since the env last spoke (it is matched with ``\\Z`` appended).
    :param function: ``function(match) -> str | None``: the text to inject after the call
        (``None``: inject nothing, e.g. an expression it cannot evaluate).
    """

    name: str
    pattern: str | re.Pattern
    function: Callable[[re.Match], str | None]
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = self.pattern.pattern if isinstance(self.pattern, re.Pattern) else str(self.pattern)
        flags = self.pattern.flags if isinstance(self.pattern, re.Pattern) else 0
        object.__setattr__(self, "_regex", re.compile(f"(?:{source})\\Z", flags))
        if not callable(self.function):
            raise TypeError(f"tool {self.name!r}: function must be callable")

    def call(self, text: str) -> str | None:
        """The text to inject when ``text`` ends with a call of this tool, else ``None``."""
        match = self._regex.search(text)
        if match is None:
            return None
        reply = self.function(match)
        if reply is not None and not isinstance(reply, str):
            raise TypeError(f"tool {self.name!r} returned {type(reply).__name__}, not str or None")
        return reply or None


@dataclass(frozen=True)
class Reply:
    """What a task says when the model ends a turn.

    :param text: the env's message (``None``: the episode ends here).
    :param score: this attempt's score, when the task computed one (a code task runs the tests
        to decide what to say). The last attempt's score is the episode's reward; without one,
        the task's ``reward`` scores the whole completion.
    :param reward: this turn's own reward (per-turn credit, e.g. a game's step reward). When any
        turn of an episode has one, the episode's reward is the sum over its turns (a turn
        without one counts 0) and ``score`` is only reported (``info["first_score"]``).
    :param chat: render ``text`` as a chat turn (a user message, then the assistant header);
        ``False`` injects it verbatim.
    :param suffix: text after the message that is never cut: the env trims ``text`` to
        ``max_reply_tokens`` (compiler output can be long), then appends ``suffix`` (a request,
        a code header).
    """

    text: str | None = None
    score: float | None = None
    reward: float | None = None
    chat: bool = True
    suffix: str = ""


RespondFn = Callable[..., Sequence[Reply]]  # respond(attempts, references, turns[, histories=]) -> [Reply]
_ASSISTANT, _USER = "\x00ASSISTANT\x00", "\x00USER\x00"


class ChatTurns:
    """Renders env messages as chat turns for one tokenizer.

    The template is rendered once around two markers (``[user, assistant=A, user=U]`` with the
    generation prompt), and what sits between ``A`` and ``U`` (the end of the assistant turn and
    the user header) and after ``U`` (the end of the user turn and the assistant header) is
    reused for every message. When the model's turn already ended with its EOS token (the
    template's end-of-turn marker), that marker is not repeated. Without a chat template a
    message is set off by blank lines.
    """

    def __init__(self, tokenizer: Any, use_template: bool) -> None:
        self.before, self.after = "\n\n", "\n\n"
        self.eos_text = ""
        if use_template:
            text = tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": "?"},
                    {"role": "assistant", "content": _ASSISTANT},
                    {"role": "user", "content": _USER},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
            if _ASSISTANT not in text or _USER not in text:
                raise ValueError("the tokenizer's chat template drops message content; cannot render env turns")
            self.before = text[text.index(_ASSISTANT) + len(_ASSISTANT) : text.index(_USER)]
            self.after = text[text.index(_USER) + len(_USER) :]
            eos = tokenizer.eos_token or ""
            self.eos_text = eos if eos and self.before.startswith(eos) else ""

    def render(self, content: str, ended_with_eos: bool) -> str:
        before = self.before[len(self.eos_text) :] if ended_with_eos else self.before
        return before + content + self.after
