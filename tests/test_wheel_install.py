"""The package works installed from a wheel, not only as an editable install.

MindSpore refuses to compile code from a site-packages module whose top-level name is on its list of third-party
libraries (`pangu` is on it), so an editable install can hide a break that every user of the wheel would hit.
This test builds the wheel from a copy of the sources, installs it without `-e` into a fresh virtual environment
outside the source tree, and runs graphs and the demo from there with no MS_JIT_MODULES in the environment.
The fresh environment borrows the already installed dependencies (MindSpore, tokenizers, ...) through a path line
in a `.pth` file, which adds their folder to sys.path without running that folder's own `.pth` files (so the
editable install's import hook of the test environment stays out).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT, shared_data

SCRIPT = textwrap.dedent("""
    import sys
    import pangu_zoo
    from pangu_zoo.models import build_model

    assert pangu_zoo.__file__.startswith(sys.argv[1]), pangu_zoo.__file__
    model = build_model("gpt2-tiny", vocab_size=100, dropout_rate=0.0, max_position_embeddings=32,
                        eod_token_id=99, pad_token_id=99, eos_token_id=99)
    logits = model.forward_logits([[1, 2, 3, 4]])
    assert logits.shape == (1, 4, 100), logits.shape
    out = model.generate([[1, 2, 3]], max_new_tokens=4)
    assert len(out[0]) == 7 and out[0][:3] == [1, 2, 3], out
    print("installed package ok:", pangu_zoo.__file__)
""")


def _run(command, cwd, env, timeout=900):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MS_JIT_MODULES", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_installed_outside_the_tree_compiles_graphs_and_runs_the_demo(tmp_path):
    tokenizer_dir = shared_data("pangu_tokenizer")
    env = _clean_env()
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(source)], cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("pangu_zoo-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
         cwd=tmp_path, env=env)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dependencies = [p for p in site.getsitepackages() if os.path.isdir(p)]
    (tmp_path / "venv_deps.pth").write_text("\n".join(dependencies) + "\n")
    shutil.move(tmp_path / "venv_deps.pth", os.path.join(purelib, "zz_dependencies.pth"))

    work = tmp_path / "elsewhere"
    work.mkdir()
    script = work / "use_installed.py"
    script.write_text(SCRIPT)
    result = _run([str(python), str(script), purelib], cwd=work, env=env)
    assert "installed package ok" in result.stdout

    demo = _run([str(venv / "bin" / "pangu"), "demo", "--steps", "3", "--tokenizer_dir", str(tokenizer_dir),
                 "--output_dir", str(work / "demo"), "--max_new_tokens", "4"], cwd=work, env=env)
    assert "output:" in demo.stdout, demo.stdout
    assert (work / "demo" / "model" / "config.json").is_file()
