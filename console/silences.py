"""Expiring the Alertmanager silences an incident's runbooks made, when the engineer resolves
it with ``--expire-silences``: each one through the registry's ``alert.expire_silence``, its
request shown before it runs, confirmed as any change is (``--yes``; in a protected
environment also ``--confirm-target HOST``), and logged in the incident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

import httpx

from backends.ssh import SshPool
from console.actions import ActionRefused, AlreadyDone, Confirmation, Registry
from console.config import Config
from console.incidents import IncidentLog


def silences_of(log: IncidentLog, incident_id: int) -> list[str]:
    """The silences the incident's runs made (alert.silence steps that ran), oldest first."""
    found: list[str] = []
    for event in log.events(incident_id=incident_id):
        facts = event["data"].get("facts") if event["kind"] == "step.finished" else None
        silence_id = facts.get("silence_id") if isinstance(facts, dict) else None
        if isinstance(silence_id, str) and silence_id not in found:
            found.append(silence_id)
    return found


async def expire_silences(
    config: Config,
    log: IncidentLog,
    incident_id: int,
    operator_name: str,
    *,
    yes: bool,
    confirm_targets: Sequence[str],
    read_only: bool,
    out: TextIO,
) -> bool:
    """Expire each silence of the incident still in force; whether all of them are now."""
    all_done = True
    async with httpx.AsyncClient() as http:
        registry = Registry(config, SshPool(()), http, read_only=read_only)
        for silence_id in silences_of(log, incident_id):
            try:
                plan = await registry.plan("alert.expire_silence", {"silence_id": silence_id})
            except AlreadyDone as exc:
                print(f"  {exc}", file=out)
                continue
            except ActionRefused as exc:
                print(f"  {exc}", file=out)
                all_done = False
                continue
            print(f"  {plan.summary}", file=out)
            for line in plan.detail.splitlines():
                print(f"    {line}", file=out)
            protected = config.protected
            if not yes or (protected and plan.target not in confirm_targets):
                need = f"--yes --confirm-target {plan.target}" if protected else "--yes"
                print(f"  not expired: {need} is needed to run it", file=out)
                all_done = False
                continue
            typed = plan.target if protected else None
            confirmation = Confirmation(operator_name, registry.digest(plan), typed)
            try:
                outcome = await registry.execute(plan, confirmation)
            except ActionRefused as exc:  # read-only, above all
                print(f"  {exc}", file=out)
                all_done = False
                continue
            print(f"  {outcome.summary}", file=out)
            log.log_incident(
                incident_id,
                "alert.silence_expired" if outcome.ok else "alert.silence_expire_failed",
                outcome.summary,
                operator_name,
                data={"silence_id": silence_id, "detail": plan.detail},
            )
            all_done = all_done and outcome.ok
    return all_done
