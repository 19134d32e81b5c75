"""Incremental (KV-cache) decoding and the `generate` loop.

Prompts of different lengths share one batch: they are right-padded for the prefill, and each row then
writes its next key/value into its own cache slot (its current length) and attends to slots
0..length. Every row therefore sees exactly what full recomputation would see, and the top-query
layer of PanGu-alpha gets each row's true position. (The reference used position 0 for the top query
and never cached the last prompt token's key/value; both are fixed here.)

PanGu-alpha hides every token equal to its pad/eod id (6) from the positions after it, prompt or generated,
and keeps the positions of the tokens around it, as the reference's predict does (its mask is ids != 6);
GPT-2 hides nothing but the padding it is told about, as Hugging Face does. See docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mindspore as ms
import numpy as np

from pangu_zoo.attention_masks import (
    beside_cache_bias,
    decode_bias,
    mask_to_bias,
    slot_onehot,
    step_bias_beside,
    visible_keys_mask,
)
from pangu_zoo.buckets import round_up
from pangu_zoo.errors import InputError
from pangu_zoo.inference.sampling import SamplingConfig, choose_next

PREFILL_BUCKET = 16
CACHE_BUCKET = 64
# Prompt positions (rows x positions) a prefill chunk holds: each position keeps about 1 MB of GPT-2 small's
# intermediates alive until its graph ends, plus its scores over the cache
CHUNK_POSITIONS = 128
# The first prompt of a shape (rows, padded positions, cache) a model sees, if it is at most this many padded
# positions, goes in one position at a time through the decode-step graph, which decoding compiles anyway: for GPT-2
# small at batch 1, 32 steps take 0.5 s where compiling the "extend" graph takes 1.1-1.6 s, much of a one-off `pangu
# generate`. The shape's later prompts compile and use "extend" (one call instead of one per position).
STEP_PREFILL_POSITIONS = 64


@dataclass
class DecodeState:
    """Explicit decoding state: the cache (keys of every layer, then values; each [B, n, T, d] tensors), how many
    positions of each row it holds, and which of its slots [B, T] later tokens may attend to.

    With `arrays` (models that prefill in chunks) the cache tensors are views of those NumPy arrays: the graphs
    read them in place, each step writes its new keys/values into them and the state it is given is consumed.
    Without (exported models, sharded plans), each step returns new cache tensors."""

    cache: tuple
    lengths: np.ndarray
    visible: np.ndarray
    arrays: tuple | None = None

    @classmethod
    def over(cls, arrays: tuple, lengths: np.ndarray, visible: np.ndarray) -> DecodeState:
        """A state whose cache is `arrays`, read in place."""
        return cls(tuple(ms.Tensor.from_numpy(array) for array in arrays), lengths, visible, arrays)

    @property
    def cache_len(self) -> int:
        return int(self.cache[0].shape[2])

    def rows(self, index) -> DecodeState:
        """The state of the given rows, with a cache of their own."""
        index = np.asarray(index, dtype=np.int64)
        if self.arrays is not None:
            return DecodeState.over(tuple(array[index] for array in self.arrays), self.lengths[index],
                                    self.visible[index])
        picked = ms.Tensor(index.astype(np.int32))
        return DecodeState(tuple(ms.ops.gather(tensor, picked, 0) for tensor in self.cache), self.lengths[index],
                           self.visible[index])

    def padded(self, rows: int) -> DecodeState:
        """This state with `rows` empty rows (length 0, nothing visible) after its own."""
        if rows == 0:
            return self
        first = self.cache[0]
        shape = (rows,) + tuple(first.shape[1:])
        lengths, visible = np.zeros(rows, self.lengths.dtype), np.zeros((rows, self.visible.shape[1]), dtype=bool)
        if self.arrays is not None:
            empty = DecodeState.over((np.zeros(shape, self.arrays[0].dtype),) * len(self.cache), lengths, visible)
        else:
            zeros = ms.Tensor(np.zeros(shape, dtype=np.float32)).astype(first.dtype)
            empty = DecodeState((zeros,) * len(self.cache), lengths, visible)
        return DecodeState.concat([self, empty])

    @staticmethod
    def concat(states: list[DecodeState]) -> DecodeState:
        """The rows of `states` (same cache length and kind) one after the other."""
        if len(states) == 1:
            return states[0]
        lengths = np.concatenate([s.lengths for s in states])
        visible = np.concatenate([s.visible for s in states])
        if states[0].arrays is not None:
            layers = zip(*(state.arrays for state in states), strict=True)
            return DecodeState.over(tuple(np.concatenate(layer, axis=0) for layer in layers), lengths, visible)
        layers = zip(*(state.cache for state in states), strict=True)
        return DecodeState(tuple(ms.ops.concat(layer, axis=0) for layer in layers), lengths, visible)


def _rows(values) -> list[np.ndarray]:
    """A list of lists (rows may differ in length), a 1-D or a 2-D array -> one array per row."""
    if isinstance(values, (list, tuple)) and values and not np.isscalar(values[0]):
        return [np.asarray(row) for row in values]
    return list(np.atleast_2d(np.asarray(values)))


def _unpadded(prompts: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each row without its masked (0) positions, wherever the padding sits."""
    if len(masks) != len(prompts):
        raise InputError(f"attention_mask has {len(masks)} rows, input_ids has {len(prompts)}")
    for row, (prompt, mask) in enumerate(zip(prompts, masks, strict=True)):
        if mask.shape != prompt.shape:
            raise InputError(f"attention_mask row {row} has shape {mask.shape}, input_ids row {row} has "
                             f"shape {prompt.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise InputError(f"attention_mask row {row} holds values other than 0 and 1")
    return [prompt[mask.astype(bool)] for prompt, mask in zip(prompts, masks, strict=True)]


def as_prompt_list(input_ids, attention_mask=None) -> list[np.ndarray]:
    """Accept a list of id lists, a 1-D array or a 2-D array, with an optional padding mask of the same shape
    (1 = token, 0 = padding, on either side). Masked positions are dropped, so each row starts at position 0
    (as Hugging Face generate places a left-padded row). Ids must have an integer type: a float array is
    refused, even with whole values, rather than rounded or truncated."""
    prompts = _rows(input_ids)
    if attention_mask is not None:
        prompts = _unpadded(prompts, _rows(attention_mask))
    if not prompts or any(p.ndim != 1 or p.size == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    for prompt in prompts:
        if not np.issubdtype(prompt.dtype, np.integer):
            raise InputError(f"input_ids must be integer token ids, got {prompt.dtype} values such as "
                             f"{prompt[0]!r}; convert them with int() or .astype(int) first")
    return [p.astype(np.int64) for p in prompts]


def hidden_token_id(config) -> int | None:
    """The id generation hides from later positions: PanGu-alpha's pad/eod id (the reference masks ids equal
    to it), none for GPT-2."""
    return config.pad_token_id if config.family == "pangu_alpha" else None


def _visible(ids: np.ndarray, hidden_id: int | None) -> np.ndarray:
    return np.ones(ids.shape, dtype=bool) if hidden_id is None else ids != hidden_id


def chunk_length(batch: int, padded: int, cache_len: int) -> int:
    """Positions per prefill chunk for `batch` rows padded to `padded` positions: the whole prompt when the rows
    fit in `CHUNK_POSITIONS`, else equal chunks of a multiple of `PREFILL_BUCKET` whose padding fits in the cache
    (else chunks of `PREFILL_BUCKET`, else one pass)."""
    limit = max(PREFILL_BUCKET, CHUNK_POSITIONS // batch // PREFILL_BUCKET * PREFILL_BUCKET)
    if padded <= limit:
        return padded
    for length in (round_up(-(-padded // -(-padded // limit)), PREFILL_BUCKET), PREFILL_BUCKET):
        if round_up(padded, length) <= cache_len:
            return length
    return padded


class IncrementalDecoder:
    """Prefill once, then one token per row per step, with the cache passed in and returned.

    A model that offers it (`prefills_in_chunks`: this project's models on one device) prefills in chunks through
    its "extend" graph, into a cache of the final length; others (exported models, sharded plans) prefill the
    whole prompt in one pass."""

    def __init__(self, model, chunked: bool | None = None) -> None:
        """`chunked`: prefill in chunks (None: whenever the model offers it)."""
        self.model = model
        self.config = model.config
        self.hidden_id = hidden_token_id(model.config)
        offered = bool(getattr(model, "prefills_in_chunks", False))
        if chunked and not offered:
            raise InputError("this model prefills in one pass only (an exported model or a sharded plan)")
        self.chunked = offered if chunked is None else chunked

    def prefill(self, prompts: list[np.ndarray], cache_len: int | None = None) -> tuple[np.ndarray, DecodeState]:
        """Run the prompts; return the logits of each row's next token [B, V] and the state, whose cache holds
        `cache_len` positions (default: just the padded prompts)."""
        lengths = np.array([len(p) for p in prompts])
        bucket = min(round_up(int(lengths.max()), PREFILL_BUCKET), self.config.max_position_embeddings)
        cache_len = bucket if cache_len is None else cache_len
        if cache_len < bucket:
            raise InputError(f"cache length {cache_len} is shorter than the padded prompts ({bucket})")
        ids = np.full((len(prompts), bucket), self.config.pad_token_id, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            self.model.check_input_ids(prompt)
            ids[row, :len(prompt)] = prompt
        visible = (np.arange(bucket)[None, :] < lengths[:, None]) & _visible(ids, self.hidden_id)
        if self.chunked:
            length = self._prefill_length(len(prompts), bucket, cache_len)
            logits, arrays = self._prefill_chunks(ids, visible, lengths, cache_len, length)
            return logits, DecodeState.over(arrays, lengths, np.pad(visible, ((0, 0), (0, cache_len - bucket))))
        positions = np.broadcast_to(np.arange(bucket, dtype=np.int32), ids.shape)
        outputs = self.model.graph("prefill")(
            ms.Tensor(ids), ms.Tensor(np.ascontiguousarray(positions)),
            ms.Tensor(mask_to_bias(visible_keys_mask(visible))),
            ms.Tensor((lengths - 1).astype(np.int32)),
        )
        logits, kv = outputs[0], outputs[1:]
        if cache_len > bucket:
            k0 = kv[0]
            pad = ms.Tensor(np.zeros((k0.shape[0], k0.shape[1], cache_len - bucket, k0.shape[3])), k0.dtype)
            kv = tuple(ms.ops.concat((t, pad), axis=2) for t in kv)
        visible = np.pad(visible, ((0, 0), (0, cache_len - bucket)))
        return logits.asnumpy(), DecodeState(tuple(kv), lengths, visible)

    def _prefill_length(self, batch: int, padded: int, cache_len: int) -> int:
        """Positions per prefill call: 1 (the step graph) for the first short prompt of its shape in this model's
        life (see `STEP_PREFILL_POSITIONS`), else `chunk_length`."""
        shape = (batch, padded, cache_len)
        first = shape not in self.model.prefilled_shapes
        self.model.prefilled_shapes.add(shape)
        return 1 if first and padded <= STEP_PREFILL_POSITIONS else chunk_length(batch, padded, cache_len)

    def _step_graph(self, batch: int) -> tuple[str, bool]:
        """The decode-step graph for `batch` rows and whether it returns logits (else final hidden states for the
        head on the host)."""
        on_host = self.model.head_on_host(batch)
        return ("step_hidden" if on_host else "step"), not on_host

    def _prefill_chunks(self, ids: np.ndarray, visible: np.ndarray, lengths: np.ndarray, cache_len: int,
                        length: int) -> tuple[np.ndarray, tuple]:
        """The padded prompts `ids` [B, P] `length` positions at a time, against a cache of `cache_len` positions in
        NumPy arrays: each chunk attends over the cache (earlier chunks) and over itself, with the mask the one-pass
        prefill uses, and its keys/values are then written into the arrays. Chunks go through the "extend"
        graph, single positions through the decode-step graph. Returns each row's next-token logits and the
        arrays."""
        config = self.config
        batch, padded = ids.shape
        count = -(-padded // length)
        ids = np.pad(ids, ((0, 0), (0, count * length - padded)), constant_values=config.pad_token_id)
        seen = np.pad(visible, ((0, 0), (0, count * length + cache_len - padded)))  # [B, T + chunk padding]
        slots = np.arange(cache_len)[None, :]
        shape = (batch, config.num_heads, cache_len, config.head_dim)
        arrays = tuple(np.zeros(shape, np.dtype(config.compute_dtype)) for _ in range(2 * config.num_layers))
        tensors = tuple(ms.Tensor.from_numpy(array) for array in arrays)  # views: the graphs read what they hold
        name, gives_logits = self._step_graph(batch) if length == 1 else ("extend", False)
        graph = self.model.graph(name)
        last = np.zeros((batch, config.vocab_size if gives_logits else config.hidden_size), dtype=np.float32)
        for start in range(0, count * length, length):
            query = np.arange(start, start + length)
            # the visible keys up to each query: the cached ones before the chunk, then the chunk's own
            cached = np.broadcast_to(((slots < start) & seen[:, :cache_len])[:, None, :], (batch, length, cache_len))
            bias = ms.Tensor(beside_cache_bias(cached, visible_keys_mask(seen[:, start:start + length])))
            # padding past the last prompt position sits at a clipped position (its keys are never visible)
            positions = np.broadcast_to(np.minimum(query, config.max_position_embeddings - 1).astype(np.int32),
                                        (batch, length))
            if length == 1:
                outputs = graph(ms.Tensor(ids[:, start]), ms.Tensor(positions[:, 0]), bias, *tensors)
            else:
                outputs = graph(ms.Tensor(ids[:, start:start + length]), ms.Tensor(positions), bias,
                                ms.Tensor(np.clip(lengths - 1 - start, 0, length - 1).astype(np.int32)), *tensors)
            for array, new in zip(arrays, outputs[1:], strict=True):
                array[:, :, start:start + length] = new.asnumpy()
            ends_here = (lengths - 1 >= start) & (lengths - 1 < start + length)
            if ends_here.any():
                last[ends_here] = outputs[0].asnumpy()[ends_here]
        return (last if gives_logits else self.model.head_logits(last)), arrays

    def step(self, tokens: np.ndarray, state: DecodeState) -> tuple[np.ndarray, DecodeState]:
        """Feed one token per row [B]; return next-token logits [B, V] and the new state (an in-place cache is
        updated, and `state` is consumed)."""
        lengths = state.lengths
        if int(lengths.max()) >= state.cache_len:
            raise InputError(f"the KV cache is full ({state.cache_len} positions)")
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        self.model.check_input_ids(tokens)
        positions = lengths.astype(np.int32)
        visible = state.visible.copy()
        visible[np.arange(len(tokens)), lengths] = _visible(tokens, self.hidden_id)
        if state.arrays is None:
            outputs = self.model.graph("decode")(ms.Tensor(tokens), ms.Tensor(positions),
                                                 ms.Tensor(decode_bias(lengths, state.cache_len, state.visible)),
                                                 ms.Tensor(slot_onehot(lengths, state.cache_len)), *state.cache)
            return outputs[0].asnumpy(), DecodeState(tuple(outputs[1:]), lengths + 1, visible)
        # the cache stays where it is: the step graph reads it and returns only the new keys/values
        name, gives_logits = self._step_graph(len(tokens))
        outputs = self.model.graph(name)(ms.Tensor(tokens), ms.Tensor(positions),
                                         ms.Tensor(step_bias_beside(lengths, state.cache_len, state.visible)),
                                         *state.cache)
        rows = np.arange(len(tokens))
        for array, new in zip(state.arrays, outputs[1:], strict=True):
            array[rows, :, lengths, :] = new.asnumpy()[:, :, 0, :]
        logits = outputs[0].asnumpy() if gives_logits else self.model.head_logits(outputs[0].asnumpy())
        return logits, DecodeState(state.cache, lengths + 1, visible, state.arrays)


def _stop_ids(eos_token_id) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    return frozenset(map(int, np.atleast_1d(eos_token_id)))


def _recompute_logits(model, sequences: list[list[int]]) -> np.ndarray:
    """Next-token logits by full recomputation (no cache kept): the prefill graph, which applies the head to
    each row's last position only (full-sequence logits would cost B x S x V floats)."""
    logits, _ = IncrementalDecoder(model).prefill([np.asarray(s) for s in sequences])
    return logits


def generate(model, input_ids, max_new_tokens: int = 20, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
             eos_token_id: int | Sequence[int] | None = None, seed: int | None = None, attention_mask=None,
             use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; return prompt + new ids per row.

    input_ids: a list of id lists, a 1-D or a 2-D integer array; `attention_mask` (same shape, 1 = token) drops
    padding on either side, and the prompt returned is the row without it. Float ids are refused (`InputError`).
    A row stops after it emits `eos_token_id` (one id or several; kept in the output). Penalties count
    generated tokens only, as the reference does. `use_cache=False` recomputes the whole sequence at every step.
    PanGu-alpha hides its pad/eod id from later positions (see the module docstring).
    """
    sampling = SamplingConfig(do_sample, temperature, top_k, top_p, frequency_penalty, presence_penalty)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens ({max_new_tokens}) must be at least 1")
    prompts = as_prompt_list(input_ids, attention_mask)
    longest = max(len(p) for p in prompts)
    max_positions = model.config.max_position_embeddings
    if longest + max_new_tokens - 1 > max_positions:
        raise InputError(
            f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the position table "
            f"({max_positions} positions); shorten the prompt or ask for fewer tokens"
        )
    stop_ids = _stop_ids(eos_token_id)
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    counts = np.zeros((len(prompts), vocab), dtype=np.float32)
    sequences = [list(map(int, p)) for p in prompts]
    finished = np.zeros(len(prompts), dtype=bool)

    if use_cache:
        decoder = IncrementalDecoder(model)
        cache_len = min(round_up(longest + max_new_tokens - 1, CACHE_BUCKET), max_positions)
        cache_len = max(cache_len, min(round_up(longest, PREFILL_BUCKET), max_positions))
        logits, state = decoder.prefill(prompts, cache_len)
    else:
        logits = _recompute_logits(model, sequences)
    for step in range(max_new_tokens):
        tokens = choose_next(logits, sampling, rng, counts)
        for row, token in enumerate(tokens):
            if not finished[row]:
                sequences[row].append(int(token))
                counts[row, token] += 1
                finished[row] = int(token) in stop_ids
        if finished.all() or step == max_new_tokens - 1:
            break
        if use_cache:
            logits, state = decoder.step(tokens, state)
        else:
            logits = _recompute_logits(model, sequences)
    return sequences
