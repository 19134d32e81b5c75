"""C3 zero-shot evaluation (reference `tasks.py` + `PanGUAlphaLossWithPrompt`), scored the reference's way.

For every question of the dialogue dev split and every choice, one example:

    input_str = "问：{question}\\n答：{choice}\\n该答案来自对话：{context}"
    prompt    = "问：{question}\\n答：{choice}\\n该答案来自对话："

Both are tokenised separately and padded/truncated to the sequence length S with the pad id. With
labels = tokens shifted left (pad appended),

    mask[t]  = (tokens[t] != pad) * (prompt_ids[t] == pad)
    score    = sum_t -log p(labels[t] | tokens[:t+1]) * mask[t] / S

i.e. the summed NLL of the dialogue given the question and answer (including the token after the last one,
the pad/end prediction), divided by a constant. The reference's S is 1024; here S is the model's
`max_position_embeddings` (1024 for every released preset), so the scores are the reference's exactly
for those models. The predicted choice is the one with the smallest score; the metric is top-1 accuracy.

Scoring is batched: examples are sorted by length, cut into batches of `batch_size`, and each batch is
right-padded to a multiple of 64 tokens (fewer compiled shapes). Causal attention with a padding mask
makes the result independent of how much padding a row gets.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.buckets import round_up
from pangu_zoo.errors import DataError, InputError
from pangu_zoo.evaluation.log_probs import label_log_probs

logger = logging.getLogger(__name__)

LENGTH_BUCKET = 64
DEFAULT_SPLIT = "c3-d-dev"


@dataclass
class C3Example:
    """One (question, choice) pair: the text scored, its prompt prefix, and whether the choice is right."""

    input_str: str
    prompt: str
    is_correct: bool
    idx: int


def load_c3(path: str | Path) -> list[list[Any]]:
    """Read a C3 json file: a list of [dialogue lines, questions, id]; `DataError` names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"C3 file {path} does not exist; pass --data_dir with the c3-d-dev.json of nlpdata/c3")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); re-download the C3 data") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON list of [dialogue, questions, id] instances")
    for number, instance in enumerate(data):
        where = f"{path}: instance {number}"
        if not isinstance(instance, list) or len(instance) < 2:
            raise DataError(f"{where} is not a list [dialogue lines, questions, id]")
        context, questions = instance[0], instance[1]
        if not isinstance(context, list) or not all(isinstance(line, str) for line in context):
            raise DataError(f"{where}: the dialogue (item 0) must be a list of strings")
        if not isinstance(questions, list):
            raise DataError(f"{where}: the questions (item 1) must be a list")
        for q_number, question in enumerate(questions):
            if not isinstance(question, dict) or not {"question", "choice", "answer"} <= set(question):
                raise DataError(f"{where}, question {q_number}: needs the keys question, choice and answer")
            if not isinstance(question["choice"], list) or not question["choice"]:
                raise DataError(f"{where}, question {q_number}: 'choice' must be a non-empty list")
    return data


def build_c3_examples(instances: list[list[Any]], limit: int | None = None) -> list[C3Example]:
    """One example per (question, choice), questions numbered in file order; `limit` keeps the first N questions."""
    examples: list[C3Example] = []
    idx = 0
    for instance in instances:
        context = "".join(instance[0])
        for question in instance[1]:
            if limit is not None and idx >= limit:
                return examples
            for choice in question["choice"]:
                input_str = f"问：{question['question']}\n答：{choice}\n该答案来自对话：{context}"
                prompt = f"问：{question['question']}\n答：{choice}\n该答案来自对话："
                examples.append(C3Example(input_str, prompt, choice == question["answer"], idx))
            idx += 1
    return examples


def score_token_pairs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int,
                      seq_length: int | None = None, batch_size: int = 4, progress: bool = False) -> np.ndarray:
    """Reference C3 scores (summed masked NLL / seq_length) of (tokens, prompt_ids) pairs -> float64 [N].

    seq_length defaults to the model's `max_position_embeddings`; longer inputs are truncated to it.
    """
    seq_length = seq_length or model.config.max_position_embeddings
    if seq_length > model.config.max_position_embeddings:
        raise InputError(f"seq_length {seq_length} exceeds the model's position table "
                         f"({model.config.max_position_embeddings})")
    if batch_size < 1:
        raise InputError(f"batch_size ({batch_size}) must be at least 1")
    truncated = [(list(tokens)[:seq_length], list(prompt)[:seq_length]) for tokens, prompt in pairs]
    if any(not tokens for tokens, _ in truncated):
        raise InputError("an example encodes to no tokens")
    order = np.argsort([len(tokens) for tokens, _ in truncated], kind="stable")
    scores = np.zeros(len(truncated), dtype=np.float64)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="C3 scoring", unit="batch")
    for rows in batches:
        width = min(round_up(max(len(truncated[r][0]) for r in rows), LENGTH_BUCKET), seq_length)
        # pad the batch to a fixed row count as well (repeat the first row) so shapes stay few
        filled = list(rows) + [rows[0]] * (batch_size - len(rows))
        tokens = np.full((len(filled), width), pad_id, dtype=np.int64)
        prompts = np.full((len(filled), width), pad_id, dtype=np.int64)
        for i, r in enumerate(filled):
            ids, prompt = truncated[r]
            tokens[i, :len(ids)] = ids
            prompts[i, :min(len(prompt), width)] = prompt[:width]
        logits = model.forward_logits(tokens, attention_mask=tokens != pad_id)
        labels = np.concatenate([tokens[:, 1:], np.full((len(filled), 1), pad_id)], axis=1)
        mask = (tokens != pad_id) & (prompts == pad_id)
        label_logprob = label_log_probs(logits, labels)
        batch_scores = -(label_logprob * mask).sum(axis=1) / seq_length
        scores[rows] = batch_scores[:len(rows)]
    return scores


def top1_accuracy(examples: list[C3Example], scores: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    """Accuracy of argmin-score choices over questions, and one record per question."""
    by_question: dict[int, list[int]] = {}
    for i, example in enumerate(examples):
        by_question.setdefault(example.idx, []).append(i)
    records = []
    for idx, rows in by_question.items():
        best = rows[int(np.argmin(scores[rows]))]
        records.append({"idx": idx, "scores": [float(scores[r]) for r in rows],
                        "predicted": rows.index(best), "correct": bool(examples[best].is_correct)})
    accuracy = sum(r["correct"] for r in records) / len(records) if records else 0.0
    return accuracy, records


def evaluate_c3(model, tokenizer, data_dir: str | Path, split: str = DEFAULT_SPLIT, limit: int | None = None,
                batch_size: int = 4, output: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Score `{data_dir}/{split}.json`; log and return `{'top1_acc': ...}` (plus counts); write `output` JSON."""
    path = Path(data_dir) / f"{split}.json"
    if Path(data_dir).is_file():
        path = Path(data_dir)
    start = time.perf_counter()
    examples = build_c3_examples(load_c3(path), limit)
    if not examples:
        raise DataError(f"{path} has no questions to score")
    pairs = [(tokenizer.encode(e.input_str), tokenizer.encode(e.prompt)) for e in examples]
    scores = score_token_pairs(model, pairs, tokenizer.pad_id, batch_size=batch_size, progress=progress)
    accuracy, records = top1_accuracy(examples, scores)
    metrics = {"top1_acc": accuracy}
    logger.info("%s", {"top1_acc": round(accuracy, 4)})
    result = {**metrics, "questions": len(records), "examples": len(examples), "split": split,
              "seq_length": model.config.max_position_embeddings,
              "seconds": round(time.perf_counter() - start, 2)}
    if output:
        Path(output).write_text(json.dumps({**result, "per_question": records}, ensure_ascii=False, indent=1),
                                encoding="utf-8")
    return result
