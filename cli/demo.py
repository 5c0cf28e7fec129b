"""`orchestrator demo prospecting`: the whole stack on embedded defaults, a local SMTP sink, and Larry
running the prospecting scenario on the example prospects, watched on the dashboard."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import click
import requests

from orchestrator.masking import mask_text
from orchestrator.settings import Settings

EXAMPLE_CSV = "examples/prospects.csv"  # inside the larry package
READY_SECONDS = 120


class SmtpSink:
    """aiosmtpd's handler: accepts every message and prints one masked line for it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.content, policy=default_policy)
        files = [p.get_filename() for p in msg.iter_attachments()]  # type: ignore[attr-defined]
        click.echo(mask_text(f"  [smtp sink] to {msg['To']}: {msg['Subject']}"
                             + (f" (attached: {', '.join(files)})" if files else "")))
        return "250 Message accepted"


@click.group()
def demo() -> None:
    """Demonstrations on embedded defaults."""


@demo.command("prospecting")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Larry processes")
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="prospects (default: Larry's example); a copy is used, the file is not changed")
@click.option("--keep/--no-keep", default=True, show_default=True,
              help="keep the stack running after the scenario, until Ctrl-C")
def prospecting(port: int, workers: int, csv_file: Path | None, keep: bool) -> None:
    """Start the stack and an SMTP sink, then run `larry prospect` on the example prospects."""
    try:
        import larry
        from aiosmtpd.controller import Controller
        from larry.scenario import run_scenario
    except ImportError as exc:
        raise click.ClickException(f"the demo needs {exc.name}: pip install -e '.[dev]'") from exc
    settings = Settings.from_env()
    token = os.environ.get("ORCHESTRATOR_ADMIN_TOKEN") or f"demo_{secrets.token_urlsafe(24)}"
    password = os.environ.get("ORCHESTRATOR_ADMIN_PASSWORD") or secrets.token_urlsafe(9)
    workdir = settings.data_dir / "demo" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = workdir / "prospects.csv"
    shutil.copyfile(csv_file or Path(larry.__file__).with_name("examples") / "prospects.csv", csv_path)

    sink = Controller(SmtpSink(), hostname="127.0.0.1", port=_free_port())
    sink.start()
    os.environ.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(sink.port), SMTP_TLS="none")
    env = {**os.environ, "ORCHESTRATOR_ADMIN_TOKEN": token, "ORCHESTRATOR_ADMIN_PASSWORD": password}
    stack = subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "up", "--port", str(port)],
                             env=env)
    url = f"http://127.0.0.1:{port}"
    code = 1
    try:
        _wait_ready(url, stack)
        click.echo(f"\ndashboard: {url}/  (log in as {settings.admin_user} / {password})\n"
                   f"prospects: {csv_path}; Larry's files: {workdir / 'larry'}\n")
        code = run_scenario(url, token, csv_path, workers=workers, workspace=workdir / "larry",
                            say=lambda line: click.echo(line))
        if keep:
            click.echo(f"\nThe stack stays up at {url}/ : Ctrl-C stops it.")
            while stack.poll() is None:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if stack.poll() is None:
            stack.send_signal(signal.SIGTERM)
            try:
                stack.wait(30)
            except subprocess.TimeoutExpired:
                stack.kill()
        sink.stop()
    sys.exit(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, stack: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise click.ClickException(f"the stack exited ({stack.returncode}) before it was ready")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise click.ClickException(f"the stack was not ready at {url} within {READY_SECONDS} s")
