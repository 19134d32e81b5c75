"""The dry-run environment: a stub CUDA toolkit that lets MindSpore's GPU plugin load on a machine
without a GPU, so that simulation mode (`MS_SIMULATION_LEVEL=0`) can compile sharded graphs.

Built once per MindSpore install into a cache folder, from the installed wheel's own GPU plugin:
every CUDA symbol the plugin imports becomes a stub function returning 0 (CUDA's success code) in a
library with the soname the plugin links against. A fake `nvcc` and versioned file names satisfy the
CUDA version check `import mindspore` runs. Only gcc and binutils are needed.

The environment is applied to dry-run subprocesses only, never to the calling process, so a real CUDA
setup on the same machine is left alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from pangu_zoo.errors import ConfigError

CUDA_RELEASE = "11.6"
PLUGIN = f"libmindspore_gpu.so.{CUDA_RELEASE}"
# soname -> prefix of the unversioned symbols that belong to it (checked in order: cu[A-Z] is the driver API)
SONAME_PREFIXES = {
    "libcublas.so.11": r"cublas",
    "libcurand.so.10": r"curand",
    "libcudnn.so.8": r"cudnn",
    "libcusolver.so.11": r"cusolver",
    "libcufft.so.10": r"cufft",
    "libcusparse.so.11": r"cusparse",
    "libnvrtc.so.11.2": r"nvrtc",
    "libcudart.so.11.0": r"cuda[a-zA-Z]|__cuda",
    "libcuda.so.1": r"cu[A-Z]",
}
# file names the version check parses (it globs $CUDA_HOME/lib*/libcudart.so.X.Y.Z and libcudnn.so.X.Y.Z)
VERSION_LINKS = {"libcudart.so.11.6.55": "libcudart.so.11.0", "libcudnn.so.8.5.0": "libcudnn.so.8"}
NVCC_BANNER = f"Cuda compilation tools, release {CUDA_RELEASE}, V{CUDA_RELEASE}.124"
_STRING_RETURNING = re.compile(r"^(cuda|cudnn|nvrtc|cublas|cusparse|curand|cusolver|cufft)\w*Error(String|Name)$")


def mindspore_dir() -> Path:
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("MindSpore is not installed; the dry run needs the mindspore wheel")
    return Path(next(iter(spec.submodule_search_locations)))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigError(f"the dry-run environment needs `{name}` (gcc/binutils) to build its CUDA stubs; "
                          "install gcc and binutils (Debian: apt install gcc binutils)")
    return path


def _plugin_libraries(ms_dir: Path) -> list[Path]:
    plugin_dir = ms_dir / "lib" / "plugin"
    main = plugin_dir / PLUGIN
    if not main.exists():
        raise ConfigError(f"{main} is missing: this MindSpore wheel has no CUDA {CUDA_RELEASE} GPU plugin, "
                          "which the dry run needs")
    extra = sorted(p for folder in ("gpu", f"gpu{CUDA_RELEASE}") for p in (plugin_dir / folder).glob("*.so*"))
    return [main, *extra]


def imported_cuda_symbols(libraries: list[Path]) -> dict[str, set[str]]:
    """soname -> names of the CUDA functions the libraries import (versioned by tag, others by prefix)."""
    nm = _tool("nm")
    wanted: dict[str, set[str]] = {soname: set() for soname in SONAME_PREFIXES}
    out = subprocess.run([nm, "-D", "--undefined-only", *map(str, libraries)], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U":
            continue
        name, _, version = parts[1].partition("@")
        if version in wanted:
            wanted[version].add(name)
        elif not version:
            for soname, prefix in SONAME_PREFIXES.items():
                if re.match(prefix, name):
                    wanted[soname].add(name)
                    break
    return wanted


def _stub_source(symbols: set[str]) -> str:
    lines = ["/* generated: every function reports success */"]
    for name in sorted(symbols):
        if _STRING_RETURNING.match(name):
            lines.append(f'const char *{name}(void) {{ return "cuda stub"; }}')
        else:
            lines.append(f"int {name}(void) {{ return 0; }}")
    return "\n".join(lines) + "\n"


def _build(root: Path, ms_dir: Path) -> None:
    gcc = _tool("gcc")
    symbols = imported_cuda_symbols(_plugin_libraries(ms_dir))
    lib, src, bin_dir = root / "cuda" / "lib64", root / "stub_sources", root / "cuda" / "bin"
    for folder in (lib, src, bin_dir):
        folder.mkdir(parents=True)
    for soname, names in symbols.items():
        c_file, script = src / f"{soname}.c", src / f"{soname}.map"
        c_file.write_text(_stub_source(names))
        script.write_text(f"{soname} {{ global: *; }};\n")
        subprocess.run([gcc, "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", f"-Wl,--version-script={script}",
                        "-o", str(lib / soname), str(c_file)], check=True, capture_output=True, text=True)
    for link, target in VERSION_LINKS.items():
        (lib / link).symlink_to(target)
    nvcc = bin_dir / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho '{NVCC_BANNER}'\n")
    nvcc.chmod(0o755)
    (root / "ready.json").write_text(json.dumps({"mindspore": str(ms_dir), "symbols": sum(map(len, symbols.values()))}))


def default_cache_dir() -> Path:
    base = os.environ.get("PANGU_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                         os.path.expanduser("~/.cache"), "pangu")
    return Path(base)


def ensure_simulation_env(cache_dir: str | os.PathLike | None = None) -> Path:
    """Build the stub toolkit for the installed MindSpore (once) and return its root folder."""
    ms_dir = mindspore_dir()
    key = hashlib.sha256(str((ms_dir / "lib" / "plugin" / PLUGIN).stat().st_mtime_ns).encode() +
                         str(ms_dir).encode()).hexdigest()[:12]
    root = Path(cache_dir or default_cache_dir()) / f"dryrun-cuda{CUDA_RELEASE}-{key}"
    if (root / "ready.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        _build(staging, ms_dir)
        try:
            staging.rename(root)
        except OSError:  # another process finished first
            if not (root / "ready.json").exists():
                raise
    except subprocess.CalledProcessError as err:
        raise ConfigError(f"building the dry-run CUDA stubs failed: {err.stderr.strip() or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def simulation_environ(root: Path, device_num: int, rank: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one dry-run subprocess compiling `rank` of `device_num`."""
    env = dict(os.environ if base is None else base)
    cuda = root / "cuda"
    env.update({
        "CUDA_HOME": str(cuda),
        "PATH": f"{cuda / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "LD_LIBRARY_PATH": f"{cuda / 'lib64'}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}",
        "MS_SIMULATION_LEVEL": "0",
        "RANK_SIZE": str(device_num),
        "RANK_ID": str(rank),
        # init() on GPU insists on an MPI-style launch; only the presence of these matters in simulation
        "OMPI_COMMAND": "python",
        "PMIX_RANK": "0",
    })
    for name in ("MS_WORKER_NUM", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_ROLE", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    return env
