"""The outside servers the `peers` benchmark measures our fleet against.

Each peer is installed into its own virtualenv under .cache/peers/
(git-ignored; never in requirements.txt or CI). The virtualenv reaches the
project's .venv through a .pth file, so torch, funasr and faster-whisper are
shared, not installed twice: pip adds only the server's own packages, pinned.
Setup is idempotent: a stamp records what was installed, and a later run with
the same pins only says so. Servers bind to 127.0.0.1 on a free port and are
stopped with the Lab, like our workers and fleets.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from .env import PYTHON, REPO
from .lab import Server, free_ports

PEERS_DIR = REPO / ".cache" / "peers"
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
# Pinned so a rerun measures the same servers; fastapi brings starlette, and
# every other dependency (pydantic, anyio, PyYAML, ...) is found in the .venv.
SERVER_PINS = ("fastapi==0.163.2", "python-multipart==0.0.34")


@dataclasses.dataclass(frozen=True)
class Venv:
    """A peer's virtualenv: what pip installs (one `pip install` per tuple, in
    order), the modules that must be found afterwards, and the versions to record."""

    name: str
    installs: tuple[tuple[str, ...], ...]
    modules: tuple[str, ...]
    dists: tuple[str, ...]

    @property
    def root(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"


# FunASR's server ships inside the funasr wheel (funasr/bin/server.py); it asks
# for fastapi, uvicorn and python-multipart (and vllm, for GPU models only).
FUNASR_SERVER = Venv("funasr-server", (SERVER_PINS + ("uvicorn==0.54.0",),),
                     ("fastapi", "uvicorn", "python_multipart", "funasr"),
                     ("funasr", "fastapi", "uvicorn", "torch"))
# faster-whisper-server 0.0.3 from PyPI (andyjjrt, MIT): --no-deps keeps the
# .venv's faster-whisper; then what it requires that the .venv lacks, with
# uvicorn[standard] as it asks (uvloop, httptools).
FASTER_WHISPER_SERVER = Venv("faster-whisper-server",
                             (("--no-deps", "faster-whisper-server==0.0.3"),
                              SERVER_PINS + ("uvicorn[standard]==0.54.0",)),
                             ("faster_whisper_server", "fastapi", "uvicorn", "uvloop", "python_multipart",
                              "yaml", "faster_whisper"),
                             ("faster-whisper-server", "faster-whisper", "ctranslate2", "fastapi", "uvicorn"))


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _output(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def ensure_venv(venv: Venv) -> dict[str, str]:
    """Creates and fills the virtualenv unless its stamp says it is done; returns the
    versions of `venv.dists` as the peer's interpreter sees them."""
    stamp = venv.root / "installed.json"
    wanted = json.dumps({"python": str(PYTHON), "installs": venv.installs}, indent=1)
    if venv.python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        _say(f"{venv.root.relative_to(REPO)} is set up (stamp {stamp.name}): nothing to install")
    else:
        if not venv.python.exists():
            _say(f"creating the virtualenv {venv.root.relative_to(REPO)}")
            subprocess.run([str(PYTHON), "-m", "venv", str(venv.root)], check=True)
        # `import site; site.addsitedir(...)` rather than a bare path: the .venv's own
        # .pth files are processed too, exactly as in the .venv.
        pth = Path(_output(venv.python, PURELIB)) / "_project_venv.pth"
        shared = _output(PYTHON, PURELIB)
        _say(f"{pth.relative_to(REPO)} -> {shared} (torch, funasr, faster-whisper shared)")
        pth.write_text(f"import site; site.addsitedir({shared!r})\n")
        for args in venv.installs:
            _say(f"pip install {' '.join(args)} into {venv.root.relative_to(REPO)}")
            subprocess.run([str(venv.python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                            *args], check=True)
        stamp.write_text(wanted)
    missing = _output(venv.python, "import importlib.util as u; print(' '.join(m for m in "
                                   f"{list(venv.modules)!r} if u.find_spec(m) is None))")
    if missing:
        raise RuntimeError(f"{venv.root}: {missing} not importable; delete the folder to set it up again")
    return json.loads(_output(venv.python, "import importlib.metadata as m, json; "
                                           f"print(json.dumps({{d: m.version(d) for d in {list(venv.dists)!r}}}))"))


class PeerServer(Server):
    """One outside server process on 127.0.0.1 (its whole process group); `command`
    gets `--host 127.0.0.1 --port P` appended."""

    stop_s = 30.0

    def __init__(self, work: Path, name: str, command: list[str], env: dict | None = None):
        port = free_ports(1)[0]
        # No hub, no network: everything a peer loads is a local folder.
        super().__init__(work, "peer", name, [*command, "--host", "127.0.0.1", "--port", str(port)], work,
                         {"HF_HUB_OFFLINE": "1", **(env or {})}, port)


def start(lab, server: PeerServer, timeout: float = 300) -> PeerServer:
    """Hands the server to the Lab (stopped with everything else) and waits for /health."""
    lab.things.append(server)
    return server.wait_ready(timeout)


def funasr_model(source: Path, threads: int) -> Path:
    """The same model folder (symlinks) with `ncpu` in its config.yaml: the server has
    no thread flag, and funasr's AutoModel sets torch to `ncpu` threads (default 4)
    on every call, which on 2 cores would ask for twice the cores there are."""
    folder = FUNASR_SERVER.root / f"model-ncpu{threads}"
    folder.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        link = folder / item.name
        if item.name == "config.yaml":
            link.unlink(missing_ok=True)
            link.write_text(item.read_text() + f"ncpu: {threads}\n")
        elif not link.is_symlink() or link.resolve() != item.resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(item.resolve())
    return folder


def faster_whisper_config(work: Path, model_dir: Path, threads: int) -> Path:
    """faster-whisper-server's multi-model YAML (its only way to set device, compute
    type and threads): one model, answering to OpenAI's `whisper-1`."""
    path = work / "faster-whisper-server.yaml"
    path.write_text(f"batch_size: 1\nmodels:\n  - name: whisper-1\n    path: {json.dumps(str(model_dir))}\n"
                    f"    model_options:\n      device: cpu\n      compute_type: int8\n"
                    f"      cpu_threads: {threads}\n")
    return path
