"""policies.kv_cache: the rollout's growing cache layer equals transformers' concatenating one,
selects rows and crops like it, and a rollout keeps its cache in place from step to step."""

import torch
from helpers import echo_task
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from agents import collect_episodes
from lm_envs import TokenVecEnv
from policies import CausalLMPolicy
from policies.kv_cache import MIN_SPARE_COLUMNS, GrowingLayer, with_spare_columns


def kv(rows, columns, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, columns, 4, generator=generator), torch.randn(rows, 2, columns, 4, generator=generator)


def test_growing_layer_equals_dynamic_layer_through_growth_reorder_and_crop():
    grown, plain = GrowingLayer(), DynamicLayer()
    widths = [7, 1, 1, 3] + [1] * (MIN_SPARE_COLUMNS + 10)  # past the first buffer's capacity
    pointers = set()
    for step, width in enumerate(widths):
        k, v = kv(3, width, step)
        got, want = grown.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        pointers.add(grown.keys.data_ptr())
    assert len(pointers) == 2  # one buffer, then one larger one: no copy at every step
    index = torch.tensor([2, 0])
    grown.reorder_cache(index)
    plain.reorder_cache(index)
    grown.crop(-2)
    plain.crop(-2)
    for step in range(3):
        k, v = kv(2, 1, 100 + step)
        got, want = grown.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert grown.get_seq_length() == plain.get_seq_length() == sum(widths) - 2 + 3
    # A change that leaves the buffers (here transformers' own row selection) is noticed.
    grown.batch_select_indices(torch.tensor([1]))
    plain.batch_select_indices(torch.tensor([1]))
    k, v = kv(1, 2, 7)
    assert torch.equal(grown.update(k, v)[0], plain.update(k, v)[0])


def test_with_spare_columns_only_converts_plain_caches():
    k, v = kv(2, 5, 0)
    cache = with_spare_columns(DynamicCache([(k, v), (v, k)]))
    assert [type(layer) for layer in cache.layers] == [GrowingLayer, GrowingLayer]
    assert torch.equal(cache.layers[1].keys, v) and cache.get_seq_length() == 5
    sliding = DynamicCache([(k, v, torch.tensor(3))])
    assert with_spare_columns(sliding) is sliding


def test_rollout_appends_steps_in_place(tiny_lm):
    model, tokenizer = tiny_lm
    env = TokenVecEnv(echo_task(), tokenizer, num_envs=4, max_new_tokens=8, max_prompt_tokens=16, seed=0)
    policy = CausalLMPolicy(env.observation_space, env.action_space, lambda _: 1e-3, model=model)
    states = []
    act = policy.act
    policy.act = lambda *args, **kwargs: (lambda out: (states.append(out[3]), out)[1])(act(*args, **kwargs))
    torch.manual_seed(0)
    episodes, _ = collect_episodes(policy, env, compact=False)
    layers = [state.cache.layers[0] for state in states]
    assert all(type(layer) is GrowingLayer for layer in layers)
    assert len({layer.keys.data_ptr() for layer in layers}) == 1  # the same buffer all along
    out = policy.evaluate_actions(episodes.input_ids, episodes.attention_mask, episodes.policy_mask)
    assert torch.allclose(out.log_prob, episodes.log_probs[episodes.action_mask], atol=1e-4)
