"""The continuous-batching engine on a tiny model: requests that join a running batch decode exactly as alone,
each with its own settings; penalties equal the reference formula; cancelled requests free their slots."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import randomize_weights

from pangu_zoo.inference.sampling import SamplingConfig, apply_penalties
from pangu_zoo.serving.engine import Engine, QueueFull, Sampling, collect, penalise_generated


class IdsAsText:
    """A stand-in tokenizer for the event text: the ids, space-separated (the engine only decodes)."""

    def decode(self, ids):
        return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def model():
    import mindspore as ms

    from pangu_zoo.models import build_model

    ms.set_seed(2)
    model = build_model("pangu_alpha_tiny", vocab_size=500, num_layers=3, dropout_rate=0.0,
                        max_position_embeddings=64)
    return randomize_weights(model, 2, 0.15)


@pytest.fixture
def engine(model):
    engine = Engine(model, IdsAsText(), slots=2, max_context=64, queue_limit=8, end_ids=(9,))
    engine.start()
    yield engine
    engine.stop()


def alone(engine, prompt, n):
    """Greedy `generate` of one prompt, run on the engine's thread (MindSpore must not be entered from two)."""
    return engine.run_job(lambda model: model.generate([prompt], max_new_tokens=n)[0][len(prompt):])


def greedy(max_tokens, **settings):
    return Sampling(max_tokens=max_tokens, greedy=True, frequency_penalty=0.0, presence_penalty=0.0, **settings)


@pytest.mark.parametrize("slots", [2, 5])
def test_requests_joining_a_running_batch_decode_as_alone(model, slots):
    prompts = [[11, 12, 13], [21, 22, 23, 24, 25, 6, 26], [31], [41, 42], [51, 52, 53, 54], [61, 62]]
    lengths = [12, 5, 9, 3, 7, 10]  # rows finish at different steps, so later requests join a running batch
    engine = Engine(model, IdsAsText(), slots=slots, max_context=64, queue_limit=8, end_ids=(9,))
    # 5 slots decode in batches of 1, 2, 4 or 5: 3 running rows are padded to 4
    assert engine.decode_batches == ([1, 2] if slots == 2 else [1, 2, 4, 5])
    engine.start()
    try:
        check_alone(engine, prompts, lengths)
    finally:
        engine.stop()


def check_alone(engine, prompts, lengths):
    requests = [engine.submit(p, greedy(n, stop_ids=(10_000,))) for p, n in zip(prompts, lengths, strict=True)]
    results = [collect(r) for r in requests]
    for prompt, n, (ids, text, reason) in zip(prompts, lengths, results, strict=True):
        assert ids == alone(engine, prompt, n) and reason == "length"
        assert text.split() == [str(i) for i in ids]  # streamed text covers every token
    assert engine.running == 0 and engine.stats.finished == len(prompts)


def test_each_request_keeps_its_own_settings(engine):
    sampled = Sampling(max_tokens=8, top_k=5, temperature=0.7, seed=3)
    first = collect(engine.submit([5, 7, 8], Sampling(**vars(sampled))))[0]
    # the same seeded request again, now sharing the batch with a greedy one, draws the same tokens
    other = engine.submit([1, 2, 3, 4], greedy(8, stop_ids=(10_000,)))
    again = collect(engine.submit([5, 7, 8], Sampling(**vars(sampled))))[0]
    assert again == first
    assert collect(other)[0] == alone(engine, [1, 2, 3, 4], 8)


def test_end_id_stops_a_request(engine):
    prompt = [3, 4, 5]
    expected = alone(engine, prompt, 6)
    stop = expected[2]
    ids, _, reason = collect(engine.submit(prompt, greedy(6, stop_ids=(stop,))))
    assert reason == "stop" and ids == expected[:expected.index(stop)]


def test_cancelled_requests_free_their_slots(engine):
    long = [engine.submit([1, 2], Sampling(max_tokens=60)) for _ in range(2)]
    waiting = engine.submit([3, 4], Sampling(max_tokens=60))
    for request in long:
        assert request.events.get(timeout=60)[0] == "token"
    for request in (*long, waiting):
        request.cancel()
    assert all(collect(r)[2] == "cancelled" for r in (*long, waiting))
    assert engine.running == 0 and engine.waiting == 0
    assert collect(engine.submit([5], greedy(3)))[2] in ("length", "stop")  # the engine goes on


def test_bad_requests_and_a_full_queue_are_refused(engine):
    from pangu_zoo.errors import InputError

    with pytest.raises(InputError):
        engine.submit([], greedy(3))
    with pytest.raises(InputError):
        engine.submit([1] * 64, greedy(3))  # no room left in the context
    with pytest.raises(InputError):
        engine.submit([1, 2], Sampling(top_p=0.0))
    gate = threading.Event()
    engine.run_job(lambda _model: None)  # the engine thread answers jobs
    blocker = threading.Thread(target=lambda: engine.run_job(lambda _model: gate.wait(30)))
    blocker.start()
    try:
        with pytest.raises(QueueFull):
            for _ in range(engine.queue_limit + 2):
                engine.submit([1, 2], greedy(2))
    finally:
        gate.set()
        blocker.join()


def test_penalties_on_generated_tokens_equal_the_reference_formula():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32)
    generated = rng.integers(0, 1000, 50).tolist()
    counts = np.zeros((1, 1000), np.float32)
    np.add.at(counts[0], generated, 1)
    config = SamplingConfig(True, 1.0, 3, 1.0, 1.5, 0.3)
    scores = logits.astype(np.float64)
    penalise_generated(scores, generated, config)
    np.testing.assert_array_equal(scores, apply_penalties(logits[None], counts, 1.5, 0.3)[0])
