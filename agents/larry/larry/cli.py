"""The `larry` command: `larry prospect PROSPECTS.csv` (the scenario) and `larry run` (one agent process)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import requests
from orchestrator_sdk import AgentClient, Credentials
from orchestrator_sdk.logs import configure_logging

from larry.actions import build_agent
from larry.config import LarryConfig
from larry.prospects import ProspectError
from larry.scenario import ScenarioError, run_scenario


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="larry", description="Larry, the prospecting agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prospect", help="run the prospecting scenario for every prospect of a CSV")
    p.add_argument("csv", type=Path, help="name,business,email,phone,status,notes")
    p.add_argument("--server", default=os.environ.get("ORCHESTRATOR_URL", "http://127.0.0.1:5000"))
    p.add_argument("--token", default=os.environ.get("ORCHESTRATOR_TOKEN"), help="an operator's API token")
    p.add_argument("--workers", type=int, default=1, help="Larry processes working in parallel")
    p.add_argument("--workspace", type=Path, default=None, help="where documents, invites and call records go")
    p.add_argument("--on-block", choices=("wait", "cancel"), default="wait",
                   help="wait for a person to resolve a block (default), or cancel that execution")
    r = sub.add_parser("run", help="run one Larry agent until SIGTERM")
    r.add_argument("--server", default=os.environ.get("ORCHESTRATOR_URL", "http://127.0.0.1:5000"))
    r.add_argument("--credentials", type=Path, required=True, help="the agent's credentials file (JSON)")
    r.add_argument("--log-file", type=Path, default=Path("logs/larry_execution.log"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        creds = Credentials.load(args.credentials)
        configure_logging("agent_larry", args.log_file, stream=False)
        client = AgentClient(args.server, creds.agent_id, creds.api_key, signing_secret=creds.signing_secret)
        build_agent(client, LarryConfig.from_env(), idle_sleep=0.2, max_idle_sleep=2.0).run()
        return 0
    if not args.token:
        print("larry prospect: --token (or ORCHESTRATOR_TOKEN) is an operator's API token", file=sys.stderr)
        return 2
    try:
        return run_scenario(args.server, args.token, args.csv, workers=max(1, args.workers),
                            workspace=args.workspace, on_block=args.on_block,
                            say=lambda line: print(line, flush=True))
    except ProspectError as exc:
        print(f"larry prospect: {args.csv} has errors:", *exc.problems, sep="\n  ", file=sys.stderr)
        return 2
    except ScenarioError as exc:
        print(f"larry prospect: {exc}", file=sys.stderr)
        return 1
    except requests.HTTPError as exc:  # registering an agent was refused (a wrong token...)
        print(f"larry prospect: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"larry prospect: cannot reach {args.server}: {type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
