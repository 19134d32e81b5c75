"""serving_increment/start_pangu_standalone.sh and stop_pangu.sh: a model is exported and served in the background,
the start script returns once /health answers, and stop ends exactly the process in the pid file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import REPO_ROOT, shared_data

START = REPO_ROOT / "serving_increment" / "start_pangu_standalone.sh"
STOP = REPO_ROOT / "serving_increment" / "stop_pangu.sh"


def test_start_exports_serves_and_stop_ends_only_that_process(tmp_path):
    import mindspore as ms

    from pangu_zoo.models import build_model

    tokenizer = shared_data("gpt2_bpe")
    ms.set_seed(3)
    model = build_model("gpt2-tiny", dropout_rate=0.0, max_position_embeddings=64)
    model.save_pretrained(tmp_path / "model")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # must survive stop
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable, "START_TIMEOUT": "300",
           "SERVE_ARGS": f"--tokenizer_path {tokenizer} --slots 2"}
    try:
        started = subprocess.run(["bash", str(START), str(tmp_path / "model"), str(port)], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=360)
        assert started.returncode == 0, started.stdout + started.stderr + (tmp_path / "serving.log").read_text()
        pid = int((tmp_path / "pangu_server.pid").read_text())
        assert (tmp_path / "serving_increment" / "pangu_standalone" / "pangu" / "1" / "manifest.json").is_file()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                         data=json.dumps({"prompt": [1, 2, 3], "max_tokens": 4,
                                                          "temperature": 0}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        expected = model.generate([[1, 2, 3]], max_new_tokens=4)[0][3:]
        assert answer["usage"]["completion_tokens"] == len(expected)
        # a second start on the same pid file is refused while the first runs
        again = subprocess.run(["bash", str(START), str(tmp_path / "model"), str(free_port())], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
        stopped = subprocess.run(["bash", str(STOP)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=60)
        assert stopped.returncode == 0 and f"server {pid} stopped" in stopped.stdout
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        assert not _alive(pid) and not (tmp_path / "pangu_server.pid").exists()
        assert bystander.poll() is None
        assert "Traceback" not in (tmp_path / "serving.log").read_text()
    finally:
        bystander.kill()
        subprocess.run(["bash", str(STOP)], cwd=tmp_path, env=env, capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_stop_without_a_server_says_so(tmp_path):
    result = subprocess.run(["bash", str(STOP)], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "no server to stop" in result.stdout
    (tmp_path / "pangu_server.pid").write_text("not a pid\n")
    result = subprocess.run(["bash", str(STOP)], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "does not hold a process id" in result.stderr


def test_start_refuses_a_missing_model(tmp_path):
    result = subprocess.run(["bash", str(START), str(tmp_path / "nothing")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []
