"""A client of the server's reference route, as the reference's `predict.py --enable_client`.

`POST /model/pangu/version/0:predict` with `{"instances": [{"input_sentence", "prompt", "return_scores"}]}` gives
each instance's `output_sentence`: generated text, or the C3 score. `evaluate_c3_remote` scores the C3 questions
through it, so a served model is evaluated exactly as `pangu eval c3` evaluates a model in the process.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from pangu_zoo.errors import InputError

PREDICT_ROUTE = "/model/pangu/version/0:predict"


def server_url(server_ip: str, port: str | int) -> str:
    return f"http://{server_ip}:{port}"


def predict_instances(url: str, instances: list[dict[str, Any]], timeout: float = 600.0) -> list[dict[str, Any]]:
    """POST instances to the reference route; return the server's instances (one per request instance)."""
    body = json.dumps({"instances": instances}, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url + PREDICT_ROUTE, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:300]
        raise InputError(f"the server at {url} answered {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise InputError(f"cannot reach the server at {url}: {error}") from None
    results = answer.get("instances")
    if not isinstance(results, list) or len(results) != len(instances):
        raise InputError(f"the server at {url} gave an unexpected answer: {str(answer)[:300]}")
    return results


def generate_remote(url: str, text: str) -> str:
    return predict_instances(url, [{"input_sentence": text}])[0]["output_sentence"]


def evaluate_c3_remote(url: str, data_dir: str | Path, limit: int | None = None, batch: int = 8) -> dict[str, Any]:
    """C3 zero-shot accuracy of the served model: every choice scored by the server (`return_scores`)."""
    from pangu_zoo.evaluation.c3 import DEFAULT_SPLIT, build_c3_examples, load_c3, top1_accuracy

    path = Path(data_dir)
    path = path if path.is_file() else path / f"{DEFAULT_SPLIT}.json"
    start = time.perf_counter()
    examples = build_c3_examples(load_c3(path), limit)
    scores = np.zeros(len(examples), dtype=np.float64)
    for first in range(0, len(examples), batch):
        chunk = examples[first:first + batch]
        answers = predict_instances(url, [{"input_sentence": e.input_str, "prompt": e.prompt, "return_scores": True}
                                          for e in chunk])
        scores[first:first + len(chunk)] = [float(a["output_sentence"]) for a in answers]
    accuracy, records = top1_accuracy(examples, scores)
    return {"top1_acc": accuracy, "questions": len(records), "examples": len(examples),
            "seconds": round(time.perf_counter() - start, 2), "scores": scores.tolist()}
