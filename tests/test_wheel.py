"""The wheel alone serves: built, installed in a fresh venv outside the checkout, and run.

The fresh venv gets the wheel and nothing else (no pip, no dependencies); a `.pth` file,
written after the install, then appends this environment's site-packages for the
dependencies (installing them would compile llama-cpp-python for minutes). Lines of a
`.pth` are only appended to sys.path, so the editable install's own `.pth` in there (the
path to this checkout) is never processed: the new venv cannot import the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest
from helpers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _venv_with_the_wheel(tmp_path: Path) -> Path:
    """Build the wheel, make a bare venv, install the wheel alone, then add the deps."""
    wheels = tmp_path / "wheels"
    # No build isolation and no index: hatchling comes from the dev extras.
    _run(sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation",
         "--no-index", "-w", wheels)  # fmt: skip
    (wheel,) = wheels.glob("persona-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # This pip installs into the new venv, which at this point sees only the stdlib.
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         wheel)  # fmt: skip
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    ours = sysconfig.get_paths()
    deps = dict.fromkeys([ours["purelib"], ours["platlib"]])
    (Path(site.strip()) / "_test_deps.pth").write_text("\n".join(deps) + "\n")
    return venv


def test_the_installed_wheel_serves_a_chat_and_its_pages(tmp_path):
    venv = _venv_with_the_wheel(tmp_path)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONA_") and k not in {"PYTHONPATH", "OPENAI_API_KEY"}
    }
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        PERSONA_LLM__PROVIDER="scripted",
    )
    data_dir = tmp_path / "xdg-data" / "persona"

    # The package and its files come from the venv, not from this checkout.
    probe = "import json, sys, persona; print(json.dumps([persona.__file__, sys.path]))"
    where, path = json.loads(_run(venv / "bin" / "python", "-c", probe, cwd=tmp_path, env=env))
    assert Path(where).is_relative_to(venv)
    assert not any(Path(p).resolve() == ROOT for p in path if p)
    config = json.loads(_run(venv / "bin" / "persona", "config", cwd=tmp_path, env=env))
    assert Path(config["data_dir"]) == data_dir
    assert Path(config["db_path"]) == data_dir / "persona.db"
    assert Path(config["config_file"]) == tmp_path / "xdg-config" / "persona" / "config.toml"
    assert Path(config["default_persona_path"]).is_relative_to(venv)

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(venv / "bin" / "persona"), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def server_log() -> str:
        return (tmp_path / "serve.log").read_text()

    try:
        deadline = time.monotonic() + 60  # a bound on a hang, not on speed
        while True:
            assert proc.poll() is None, server_log()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server_log()
            time.sleep(0.1)

        chat = httpx.post(f"{url}/persona/chat", json={"message": "hello"}, timeout=30)
        assert chat.status_code == 200, server_log()
        assert chat.json()["reply"]
        page = httpx.get(url, follow_redirects=True, timeout=30)
        assert page.status_code == 200 and "Mira" in page.text, server_log()
        htmx = httpx.get(f"{url}/static/htmx.min.js", timeout=30)
        assert htmx.status_code == 200
        assert htmx.content == (ROOT / "static" / "htmx.min.js").read_bytes()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    assert (data_dir / "persona.db").is_file()
    assert not list(venv.rglob("*.db*"))
