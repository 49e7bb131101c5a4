"""KV caches for the policy's passes: one cache merged from several prompt passes, and rollout
caches that append a decoding step without copying what they hold.

Both apply to a *plain* cache only: a transformers `DynamicCache` whose every layer is a
full-attention `DynamicLayer` (no sliding window, no layer without keys). For anything else
(`left_padded` returns ``None``, `with_spare_columns` returns the cache unchanged) the policy
keeps transformers' own behaviour. Public transformers cache API only: a cache's ``layers`` and
their ``keys``/``values``, building a `DynamicCache` from per-layer tensors, `Cache(layers=...)`,
and subclassing `DynamicLayer` (transformers ≥ 4.56; older versions get the fallbacks).

Imports torch and transformers only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

try:
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
except ImportError:  # transformers < 4.56: no per-layer cache classes
    from transformers import DynamicCache

    Cache = DynamicLayer = None

# A rollout cache grows by half its length when full, and by at least this many columns.
MIN_SPARE_COLUMNS = 128


def _plain_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``[(keys, values), ...]`` per layer of a plain `DynamicCache`, else ``None``."""
    if DynamicLayer is None or type(cache) is not DynamicCache:
        return None
    # Exactly DynamicLayer: a sliding-window or other subclass keeps columns differently.
    if any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in cache.layers):
        return None
    return [(layer.keys, layer.values) for layer in cache.layers]


def left_padded(caches: list[Any], columns: int) -> DynamicCache | None:
    """One `DynamicCache` over the rows of ``caches`` in order, each layer's keys and values
    left-padded with zeros to ``columns`` (masked columns: never attended). Differentiable.
    ``None`` unless every cache is plain."""
    per_cache = [_plain_layers(cache) for cache in caches]
    if any(layers is None for layers in per_cache):
        return None

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return F.pad(tensor, (0, 0, columns - tensor.shape[-2], 0))

    return DynamicCache(
        [(torch.cat([pad(k) for k, _ in layer]), torch.cat([pad(v) for _, v in layer])) for layer in zip(*per_cache)]
    )


def with_spare_columns(cache: Any) -> Any:
    """A rollout's cache whose layers are `GrowingLayer`s holding the same keys and values (one
    copy); ``cache`` itself unless it is plain. Not for autograd: steps write into buffers."""
    layers = _plain_layers(cache)
    if layers is None:
        return cache
    grown = []
    for keys, values in layers:
        layer = GrowingLayer()
        layer.update(keys, values)
        grown.append(layer)
    return Cache(layers=grown)


if DynamicLayer is not None:

    class GrowingLayer(DynamicLayer):
        """A `DynamicLayer` whose keys and values are views of buffers with spare columns.

        `DynamicLayer.update` concatenates, copying the whole cache at every decoding step: O(L)
        per step and O(L²) per rollout. At a few hundred columns that copy was a sixth of a
        16-row decoding step of the embedded model on our CPU, even with freed memory kept
        (`agents.memory`), and a third without. Here a step writes its new columns into the
        buffer; a full buffer is replaced by one half as long again (amortised O(1) per column).
        Selecting rows (`reorder_cache`, the rollout's compaction) selects them from the buffer.
        Any other change that leaves the views (``crop`` aside, which keeps them) is noticed at
        the next `update`, which copies into a fresh buffer.
        """

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._key_buffer: torch.Tensor | None = None
            self._value_buffer: torch.Tensor | None = None

        def _views_of_buffers(self) -> bool:
            buffers, views = (self._key_buffer, self._value_buffer), (self.keys, self.values)
            return all(
                b is not None
                and v is not None
                and v.dim() == 4
                and v.shape[:2] == b.shape[:2]
                and v.data_ptr() == b.data_ptr()
                and v.stride() == b.stride()
                for b, v in zip(buffers, views)
            )

        def _rebuffer(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
            held = self.get_seq_length()
            capacity = needed + max(MIN_SPARE_COLUMNS, needed // 2)
            buffers = []
            for old, new in ((self.keys, key_states), (self.values, value_states)):
                buffer = new.new_empty(*new.shape[:2], capacity, new.shape[-1])
                if held:
                    buffer[:, :, :held].copy_(old)
                buffers.append(buffer)
            self._key_buffer, self._value_buffer = buffers
            self.keys, self.values = self._key_buffer[:, :, :held], self._value_buffer[:, :, :held]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            held, new = self.get_seq_length(), key_states.shape[-2]
            if not (held and self._views_of_buffers()) or held + new > self._key_buffer.shape[-2]:
                self._rebuffer(key_states, value_states, held + new)
            self._key_buffer[:, :, held : held + new].copy_(key_states)
            self._value_buffer[:, :, held : held + new].copy_(value_states)
            self.keys, self.values = self._key_buffer[:, :, : held + new], self._value_buffer[:, :, : held + new]
            return self.keys, self.values

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            held = self.get_seq_length()
            if not (held and self._views_of_buffers()):
                return super().reorder_cache(beam_idx)
            index = beam_idx.to(self._key_buffer.device)
            self._key_buffer = self._key_buffer.index_select(0, index)
            self._value_buffer = self._value_buffer.index_select(0, index)
            self.keys, self.values = self._key_buffer[:, :, :held], self._value_buffer[:, :, :held]
else:
    GrowingLayer = None  # transformers < 4.56: `with_spare_columns` returns caches unchanged
