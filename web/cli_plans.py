"""`orchestrator plans ...`: import, export and decompose plans from the command line (being written)."""

from __future__ import annotations

import click


@click.group()
def plans() -> None:
    """Plans: import (PlanExe folders, plan files), export, decompose."""
