"""Larry's documents: interview notes, findings, feedback analysis and proposals, as Markdown files in
the workspace, written from templates, or by an OpenAI-compatible model when LLM_BASE_URL is set (the
same settings as the server's LLM decomposer); a model that fails falls back to the template."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from larry.config import LarryConfig

log = logging.getLogger("agent_larry")

DEFAULT_TOPICS = ["Current workflow", "Pain points", "Tools in use", "Budget and timeline"]


def safe_path(folder: Path, relative: str) -> Path:
    """`relative` inside `folder`, never outside it (a plan's params are not trusted with the filesystem)."""
    parts = [p for p in re.split(r"[\\/]+", relative) if p not in ("", ".", "..")]
    path = folder.joinpath(*parts) if parts else folder / "document.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def topics_of(params: dict[str, Any]) -> list[str]:
    topics = params.get("required_topics") or params.get("topics") or params.get("focus") or params.get("sections")
    if isinstance(topics, str):
        topics = [t.strip() for t in topics.split(",") if t.strip()]
    return [str(t) for t in topics] if isinstance(topics, list) and topics else list(DEFAULT_TOPICS)


def ask_llm(cfg: LarryConfig, prompt: str, *, timeout: float = 30.0) -> str | None:
    """The model's answer, or None without a model or when it fails (the caller uses its template)."""
    if not cfg.llm_base_url:
        return None
    headers = {"Authorization": f"Bearer {cfg.llm_api_key}"} if cfg.llm_api_key else {}
    try:
        resp = requests.post(f"{cfg.llm_base_url.rstrip('/')}/chat/completions", headers=headers, timeout=timeout,
                             json={"model": cfg.llm_model, "messages": [
                                 {"role": "system", "content": "You write concise business documents in Markdown."},
                                 {"role": "user", "content": prompt}]})
        resp.raise_for_status()
        return str(resp.json()["choices"][0]["message"]["content"])
    except (requests.RequestException, KeyError, IndexError, ValueError) as exc:
        log.warning("the LLM did not answer (%s); using the template", type(exc).__name__)
        return None


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def interview_notes(interviewee: str, topics: list[str], duration: Any, context: dict[str, Any]) -> str:
    lines = [f"# Discovery interview notes: {interviewee}", "", f"- Date: {_today()}",
             f"- Planned duration: {duration or 60} minutes", ""]
    for item in context.get("previous_tasks") or []:
        lines.append(f"- Earlier: {item}")
    lines.append("")
    for topic in topics:
        lines += [f"## {topic}", "", "_Notes to be completed from the call._", ""]
    return "\n".join(lines)


def findings(title: str, sections: list[str], sources: list[tuple[str, str]]) -> str:
    lines = [f"# {title}", "", f"_Written {_today()} by Larry._", ""]
    for section in sections:
        lines += [f"## {section}", "", "- (to be detailed)", ""]
    if sources:
        lines += ["## Sources", ""] + [f"- {name}" for name, _ in sources] + [""]
    return "\n".join(lines)


def feedback_analysis(focus: list[str], sources: list[tuple[str, str]]) -> str:
    headings = [line[3:].strip() for _, text in sources for line in text.splitlines() if line.startswith("## ")]
    themes = list(dict.fromkeys(headings)) or focus
    lines = [f"# Feedback analysis ({_today()})", "", "## Themes", ""] + [f"- {t}" for t in themes]
    lines += ["", "## Priorities", ""] + [f"{i}. {t}" for i, t in enumerate(themes[:5], 1)]
    lines += ["", "## Read", ""] + [f"- {name}" for name, _ in sources] + [""]
    return "\n".join(lines)


def proposal(client: str, business: str | None, themes: list[str]) -> str:
    lines = [f"# Proposal for {client}" + (f" ({business})" if business else ""), "", f"_Date: {_today()}_", "",
             "## What we heard", ""] + [f"- {t}" for t in themes]
    lines += ["", "## What we propose", "", "A system built around the workflow above, delivered in phases:", "",
              "1. Discovery and design (2 weeks)", "2. First working version (4 weeks)", "3. Training and support",
              "", "## Next step", "", "A short demo to walk through the proposal.", ""]
    return "\n".join(lines)


def read_sources(folder: Path, names: list[str]) -> list[tuple[str, str]]:
    """The Markdown files named (inside `folder`), or all of the execution's Markdown files when none is named."""
    paths = [safe_path(folder, n) for n in names] if names else sorted(folder.glob("**/*.md"))
    return [(str(p.relative_to(folder)), p.read_text(encoding="utf-8")) for p in paths if p.is_file()]
