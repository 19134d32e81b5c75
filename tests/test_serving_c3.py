"""C3 through the server: a PanGu-alpha exported with its scoring graph, served from the export alone, gives the
same per-choice scores and accuracy through `predict.py --enable_client --eval_task c3` as `pangu eval c3` gives
on the model in the process."""

from __future__ import annotations

import json

import numpy as np
from conftest import randomize_weights, shared_data

from pangu_zoo.cli import main

QUESTIONS = 6


def test_enable_client_c3_equals_eval_c3(tmp_path, capsys):
    import mindspore as ms

    from pangu_zoo.evaluation.c3 import DEFAULT_SPLIT, build_c3_examples, load_c3, score_token_pairs
    from pangu_zoo.models import build_model
    from pangu_zoo.serving.app import create_app
    from pangu_zoo.serving.client import evaluate_c3_remote
    from pangu_zoo.serving.engine import Engine
    from pangu_zoo.serving.export import export_model
    from pangu_zoo.serving.exported import ExportedModel
    from pangu_zoo.serving.wsgi import BackgroundServer
    from pangu_zoo.tokenizers import load_tokenizer

    tokenizer_dir, c3_dir = shared_data("pangu_tokenizer"), shared_data("c3")
    ms.set_seed(11)
    model = build_model("pangu_alpha_tiny", dropout_rate=0.0, max_position_embeddings=128)
    randomize_weights(model, 11, 0.05)
    model.save_pretrained(tmp_path / "model")
    folder = export_model(model, tmp_path / "out", tokenizer_path=tokenizer_dir, tokenizer_kind="pangu-alpha",
                          eval_graph=True)

    # in the process, as `pangu eval c3` does
    assert main(["eval", "c3", "--model_dir", str(tmp_path / "model"), "--tokenizer_path", str(tokenizer_dir),
                 "--data_dir", str(c3_dir), "--limit", str(QUESTIONS)]) == 0
    local_line = capsys.readouterr().out.strip().splitlines()[-1]
    tokenizer = load_tokenizer("pangu-alpha", tokenizer_dir)
    examples = build_c3_examples(load_c3(c3_dir / f"{DEFAULT_SPLIT}.json"), QUESTIONS)
    local_scores = score_token_pairs(model, [(tokenizer.encode(e.input_str), tokenizer.encode(e.prompt))
                                             for e in examples], tokenizer.pad_id)

    # served from the export alone
    exported = ExportedModel(folder)
    engine = Engine(exported, load_tokenizer("pangu-alpha", exported.tokenizer_dir), slots=2)
    engine.start()
    try:
        with BackgroundServer(create_app(engine, engine.tokenizer, "pangu-tiny")) as url:
            remote = evaluate_c3_remote(url, c3_dir, limit=QUESTIONS)
            port = url.rsplit(":", 1)[1]
            assert main_predict(["--enable_client", "--server_ip", "127.0.0.1", "--port", port, "--eval_task", "c3",
                                 "--eval_data_url", str(c3_dir), "--eval_limit", str(QUESTIONS)]) == 0
            client_line = capsys.readouterr().out.strip().splitlines()[-1]
    finally:
        engine.stop()
    np.testing.assert_allclose(remote["scores"], local_scores, rtol=1e-6)
    assert client_line == local_line, (client_line, local_line)
    assert json.loads(local_line.replace("'", '"'))["top1_acc"] == round(remote["top1_acc"], 4)


def main_predict(argv: list[str]) -> int:
    from pangu_zoo.inference.predict import main as predict_main

    return predict_main(argv)
