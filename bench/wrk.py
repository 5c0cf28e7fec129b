"""Drive HTTP load with wrk, a C load generator, so that the client does not eat the cores it measures.

`run_wrk` writes a Lua script that cycles through request templates (each `{n}` in a body or path
becomes a number unique to the request, so no two bodies are alike), optionally paces each
connection, counts answers by status, and prints one machine-readable line that this module reads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Statuses counted one by one; anything else falls under "other".
_STATUSES = (200, 201, 202, 204, 400, 401, 404, 409, 413, 422, 429, 500, 503)

# What every script of ours starts with, %-formatted with the script: each thread gets a number
# (`tid`, so no two threads make the same request) and is kept for `done`; `pace_ms` paces each
# connection when above 0.
THREADS_LUA = r"""
local pace_ms = %(pace_ms)d
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

if pace_ms > 0 then
  function delay() return pace_ms end
end
"""

_LUA = THREADS_LUA + r"""
local templates = %(templates)s
local statuses = {%(statuses)s}

function init(args)
  counter = 0
  for _, s in ipairs(statuses) do _G["n" .. s] = 0 end
  nother = 0
end

function request()
  counter = counter + 1
  local t = templates[((counter + tid * 7919) %% #templates) + 1]
  local n = tostring(tid * 1000000000 + counter)
  local path = string.gsub(t.path, "{n}", n)
  local body = t.body and string.gsub(t.body, "{n}", n) or nil
  return wrk.format(t.method, path, t.headers, body)
end

function response(status, headers, body)
  local key = "n" .. status
  if _G[key] ~= nil then _G[key] = _G[key] + 1 else nother = nother + 1 end
end

function done(summary, latency, requests)
  local parts = {}
  for _, s in ipairs(statuses) do
    local total = 0
    for _, t in ipairs(threads) do total = total + (t:get("n" .. s) or 0) end
    table.insert(parts, string.format('"%%d": %%d', s, total))
  end
  local other = 0
  for _, t in ipairs(threads) do other = other + (t:get("nother") or 0) end
  table.insert(parts, string.format('"other": %%d', other))
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, "timeouts": %%d, ' ..
    '"statuses": {%%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, table.concat(parts, ", ")))
end
"""


@dataclass(frozen=True)
class Template:
    """One request wrk sends; `{n}` in `path` or `body` becomes a number unique to each request."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: int

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def count(self, *statuses: int) -> int:
        return sum(self.statuses.get(str(s), 0) for s in statuses)


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian's package when missing (as .ci/run installs chromium)."""
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return found


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for our ASCII bodies


def _lua_templates(templates: list[Template]) -> str:
    rows = []
    for t in templates:
        headers = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in t.headers.items())
        body = _lua_string(t.body) if t.body is not None else "nil"
        rows.append(f"{{method = {_lua_string(t.method)}, path = {_lua_string(t.path)}, "
                    f"headers = {{{headers}}}, body = {body}}}")
    return "{\n" + ",\n".join(rows) + "\n}"


def run_wrk(base_url: str, templates: list[Template], *, duration_s: int = 15, threads: int = 2,
            connections: int = 64, pace_ms: int = 0, timeout_s: int = 10) -> WrkResult:
    """Run wrk against `base_url` with `templates`; `pace_ms` makes each connection wait that long
    before each request (an offered rate of about connections × 1000 / pace_ms per second)."""
    script = _LUA % {"templates": _lua_templates(templates), "statuses": ", ".join(map(str, _STATUSES)),
                     "pace_ms": pace_ms}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "load.lua"
        path.write_text(script)
        out = subprocess.run(
            [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", f"--timeout={timeout_s}s",
             "-s", str(path), base_url],
            capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    return WrkResult(
        requests=raw["requests"], seconds=raw["duration_us"] / 1e6, p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000,
        statuses=raw["statuses"],
        socket_errors=raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"])
