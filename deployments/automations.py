"""ragtune's Prefect automations, defined as code and applied by `make serve` (infra/stack.py).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.automations [--config FILE.toml]

- `ragtune-retrain-on-change`: on `ragtune.ingest.completed` whose table resource carries
  `ragtune.retrain-suggested=true` (the ingest changed more than `events.retrain_changed_share` of the
  chunks, decided by the ingest run's settings) → run `events.retrain_deployment` (default
  `retrain/retrain-demo`) on the ingested table.
- `ragtune-notify-on-regression`: on `ragtune.evaluation.regressed` → send a notification through
  the block `events.notify_block` (`<block-type-slug>/<name>`), or through a custom-webhook block
  `ragtune-notify` saved from `events.notify_url` (the URL kept in the block's `secrets`, its `url` a
  `{{notify_url}}` placeholder, so the UI and API never show it). With neither configured the automation is applied
  *disabled* with a do-nothing action, so it shows in the UI; configure a block and re-apply.

Applying is idempotent: an automation of the same name is replaced (updated in place), never duplicated.
Deployment names are resolved to ids at apply time, so apply after `prefect deploy --all`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect.automations import Automation, DoNothing, EventTrigger, RunDeployment, SendNotification
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

from tasks.config import EventSettings, load_settings
from tasks.events import EVALUATION_REGRESSED, INGEST_COMPLETED, RETRAIN_SUGGESTED

RETRAIN_ON_CHANGE = "ragtune-retrain-on-change"
NOTIFY_ON_REGRESSION = "ragtune-notify-on-regression"
NOTIFY_BLOCK_NAME = "ragtune-notify"
NOTIFY_URL_SECRET = "notify_url"  # key in the block's secrets; its `url` is "{{notify_url}}"

NOTIFY_SUBJECT = "ragtune: evaluation {{ event.payload.run_id }} regressed"
NOTIFY_BODY = (
    "The arm in service ({{ event.payload.serving_arm }}, adapter {{ event.payload.adapter or 'base' }}) got worse than in run "
    "{{ event.payload.previous_run_id }} on {{ event.payload.eval_path }}:\n"
    "{% for r in event.payload.regressions %}- {{ r.metric }}: {{ r.now.value }} [{{ r.now.low }}, {{ r.now.high }}] "
    "(was {{ r.previous.value }})\n{% endfor %}"
    "Report: {{ event.payload.report }}"
)


@dataclass(frozen=True)
class Applied:
    name: str
    id: str
    enabled: bool
    note: str = ""


def _deployment_id(client: Any, name: str) -> Any:
    try:
        return client.read_deployment_by_name(name).id
    except Exception as e:  # noqa: BLE001 - ObjectNotFound, or a malformed name
        raise ValueError(
            f"deployment {name!r} not found on {client.api_url}: run `prefect deploy --all --prefect-file deployments/prefect.yaml` "
            "first, or set events.retrain_deployment (RAGTUNE_EVENTS__RETRAIN_DEPLOYMENT) to an existing <flow>/<deployment>"
        ) from e


def notify_block_id(client: Any, events: EventSettings) -> tuple[Any | None, str]:
    """The notification block's document id and where it came from; (None, why) when none is configured."""
    if events.notify_block:
        slug, sep, name = events.notify_block.partition("/")
        if not sep or not name:
            raise ValueError(f"events.notify_block {events.notify_block!r}: write <block-type-slug>/<name>, e.g. custom-webhook/ragtune-notify")
        try:
            return client.read_block_document_by_name(name=name, block_type_slug=slug).id, f"block {events.notify_block}"
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"notification block {events.notify_block!r} not found: create it in the UI (Blocks) or with its Python class") from e
    if events.notify_url is not None:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        # The whole URL is a secret (webhook tokens live in the path or query): the block's `url` is only
        # a placeholder, filled from its `secrets` (a SecretDict, masked in the UI/API) when it sends.
        block = CustomWebhookNotificationBlock(
            name=NOTIFY_BLOCK_NAME, url="{{" + NOTIFY_URL_SECRET + "}}", method="POST",
            secrets={NOTIFY_URL_SECRET: events.notify_url.get_secret_value()},
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
        )  # fmt: skip
        return block.save(NOTIFY_BLOCK_NAME, overwrite=True), f"custom-webhook/{NOTIFY_BLOCK_NAME} from events.notify_url"
    return None, "no notification block: set RAGTUNE_EVENTS__NOTIFY_BLOCK=<slug>/<name> or RAGTUNE_EVENTS__NOTIFY_URL and re-apply"


def definitions(client: Any, events: EventSettings) -> list[tuple[Automation, str]]:
    """The automations as code, with their deployment and block ids resolved on `client`'s server."""
    retrain = Automation(
        name=RETRAIN_ON_CHANGE,
        description=f"Retrain when an ingest changed more than events.retrain_changed_share of a table's chunks "
        f"(label {RETRAIN_SUGGESTED}=true on {INGEST_COMPLETED}); runs {events.retrain_deployment} on that table.",
        enabled=True,
        trigger=EventTrigger(
            expect={INGEST_COMPLETED},
            match={"prefect.resource.id": "ragtune.table.*", RETRAIN_SUGGESTED: "true"},
            posture="Reactive",
            threshold=1,
            within=timedelta(0),
        ),
        actions=[RunDeployment(
            source="selected",
            deployment_id=_deployment_id(client, events.retrain_deployment),
            # the ingest's own settings file ("" when it had none: the retrain then finds its settings as the ingest did, see flows/retrain.py)
            parameters={"table": {"__prefect_kind": "jinja", "template": "{{ event.resource['ragtune.table'] }}"},
                        "config_file": {"__prefect_kind": "jinja", "template": "{{ event.resource['ragtune.config-file'] }}"}},
        )],
    )  # fmt: skip
    block_id, where = notify_block_id(client, events)
    notify = Automation(
        name=NOTIFY_ON_REGRESSION,
        description=f"Notify when the arm in service regressed against the previous evaluation ({EVALUATION_REGRESSED}); {where}.",
        enabled=block_id is not None,
        trigger=EventTrigger(
            expect={EVALUATION_REGRESSED}, match={"prefect.resource.id": "ragtune.evaluation.*"},
            posture="Reactive", threshold=1, within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=NOTIFY_SUBJECT, body=NOTIFY_BODY)] if block_id else [DoNothing()],
    )  # fmt: skip
    return [(retrain, ""), (notify, "" if block_id else f"disabled: {where}")]


def apply(config_file: str | None = None) -> list[Applied]:
    """Create or replace every ragtune automation on the server at PREFECT_API_URL."""
    events = load_settings(config_file).events
    out = []
    with get_client(sync_client=True) as client:
        for automation, note in definitions(client, events):
            existing = client.read_automations_by_name(automation.name)
            if existing:
                automation_id = existing[0].id
                # the update endpoint rejects owner_resource (as Prefect's own Automation.update knows)
                client.update_automation(automation_id, AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"})))
                for duplicate in existing[1:]:  # made by hand or by an older apply: one of each name
                    client.delete_automation(duplicate.id)
            else:
                automation_id = client.create_automation(AutomationCore(**automation.model_dump(exclude={"id"})))
            out.append(Applied(automation.name, str(automation_id), automation.enabled, note))
    return out


def apply_automations(config_file: str | None = None) -> list[str]:
    """Apply ragtune's automations (idempotent); returns their names. `make serve` calls this after deploying."""
    return [a.name for a in apply(config_file)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.automations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="ragtune TOML settings file (the [events] section)")
    args = parser.parse_args(argv)
    try:
        applied = apply(args.config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for a in applied:
        print(f"{a.name}: {'enabled' if a.enabled else 'disabled'} ({a.id})" + (f"; {a.note}" if a.note else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
