"""The README's first command, run as a new user would, brings up a server that the README's own
curl and openai-client examples work against (with the port and admin key of this run)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
START_TIMEOUT_SECONDS = 300
KEY_PATTERN = re.compile(r"lpx_[A-Za-z0-9_-]{20,}")


def code_blocks(markdown: str, section: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks under the `## section` heading."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.DOTALL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_banner(process: subprocess.Popen, log: Path, port: int) -> str:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        text = log.read_text(errors="replace")
        if f"http://127.0.0.1:{port}/v1" in text and "/dashboard" in text:
            keys = KEY_PATTERN.findall(text)
            assert len(keys) == 1, text
            return keys[0]
        time.sleep(0.5)
    pytest.fail(f"no banner after {START_TIMEOUT_SECONDS} s:\n{log.read_text()}")


@pytest.fixture
def readme_server(tmp_path):
    blocks = code_blocks(README.read_text(), "Two commands")
    first_command = blocks[0][1].splitlines()[0].split("#")[0].strip()
    assert first_command == "bash scripts/run.sh"
    port = free_port()
    env = {**os.environ, "LORAPLEX_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*first_command.split(), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        admin_key = wait_for_banner(process, log, port)
        yield port, admin_key, env, log
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_readme_quickstart_works_against_a_fresh_server(readme_server, tmp_path, peft_adapters):
    port, admin_key, env, log = readme_server
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert httpx.get(f"{url}/docs").status_code == 200

    workdir = tmp_path / "user"
    shutil.copytree(peft_adapters[0].path, workdir / "my-adapter")
    blocks = code_blocks(README.read_text(), "Use the API")
    shell = [code for language, code in blocks if language == "bash"]
    python = [code for language, code in blocks if language == "python"]
    assert len(shell) == 1 and len(python) == 1
    script = shell[0].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = re.sub(r"export ADMIN_KEY=\S+", f"export ADMIN_KEY={admin_key}", script)
    script = script.replace("source .venv/bin/activate", f"source {REPO}/.venv/bin/activate")
    # What the user's shell now holds, for the Python example run next.
    script += (
        '\necho\necho "OPENAI_API_KEY=$OPENAI_API_KEY"\necho "OPENAI_BASE_URL=$OPENAI_BASE_URL"\n'
    )
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    output = ran.stdout
    assert '"name":"acme"' in output
    assert '"id":"support-bot:1"' in output and '"object":"chat.completion"' in output
    assert '"error"' not in output

    exported = dict(re.findall(r"^(OPENAI_API_KEY|OPENAI_BASE_URL)=(\S+)$", output, re.MULTILINE))
    client = subprocess.run(
        [sys.executable, "-c", python[0]],
        cwd=workdir,
        env={**env, **exported},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert client.returncode == 0, client.stderr
    usage = re.search(r"completion_tokens=(\d+).*total_tokens=(\d+)", client.stdout)
    assert usage is not None and 1 <= int(usage[1]) <= 16, client.stdout
    assert client.stdout.endswith("\n") and len(client.stdout.strip()) > len(usage[0])
    assert "Traceback" not in log.read_text()
