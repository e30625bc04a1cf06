"""The orders service: asap-protocol's create_app with bearer auth and three skills.

Run: uvicorn orders_service.app:app  (production: gunicorn -c gunicorn.conf.py orders_service.app:app)
"""

import asyncio
import logging
from datetime import datetime, timezone

from asap.errors import ASAPError
from asap.models.entities import AuthScheme, Capability, Endpoint, Manifest, Skill, StateSnapshot
from asap.models.enums import TaskStatus
from asap.models.envelope import Envelope
from asap.models.ids import generate_id
from asap.models.payloads import TaskRequest, TaskResponse
from asap.transport.handlers import HandlerRegistry
from asap.transport.server import create_app

from . import inventory, orders, settings

log = logging.getLogger("orders_service")


def validate_token(token):
    if token == settings.API_TOKEN:
        return "urn:asap:agent:orders-client"
    return None


async def lookup_order(data, sender):
    order = orders.find(data.get("order_id"))
    if order is None:
        return TaskStatus.FAILED, {"error": "order not found"}
    return TaskStatus.COMPLETED, order


async def check_stock(data, sender):
    order = orders.find(data.get("order_id"))
    sku = order["sku"] if order else data.get("sku")
    if not sku:
        return TaskStatus.FAILED, {"error": "order_id or sku required"}
    try:
        level = await inventory.stock_level(sender, sku)
    except ASAPError as exc:
        log.error(f"inventory call failed for {sku}: {exc}")
        return TaskStatus.FAILED, {"error": "inventory unavailable"}
    return TaskStatus.COMPLETED, {"sku": sku, "inventory": level}


async def reconcile_orders(data, sender):
    """Walk every order, one step per order, saving progress so a restart can pick up where it stopped."""
    task_id = str(data.get("task_id") or generate_id())
    store = app.state.snapshot_store
    last = store.get(task_id)
    done = last.data["done"] if last else 0
    ids = sorted(orders.ORDERS)
    for i in range(done, len(ids)):
        await asyncio.sleep(float(data.get("step_seconds", 0.2)))
        store.save(StateSnapshot(id=generate_id(), task_id=task_id, version=i + 1,
                                 data={"done": i + 1, "total": len(ids)}, checkpoint=True,
                                 created_at=datetime.now(timezone.utc)))
    return TaskStatus.COMPLETED, {"task_id": task_id, "reconciled": len(ids), "resumed_at": done}


SKILLS = {"lookup_order": lookup_order, "check_stock": check_stock, "reconcile_orders": reconcile_orders}


async def handle_task(envelope: Envelope, manifest: Manifest) -> Envelope:
    task = TaskRequest.model_validate(envelope.payload_dict)
    log.info(f"task {task.skill_id} from {envelope.sender}: {task.input}")
    skill = SKILLS.get(task.skill_id)
    if skill is None:
        status, result = TaskStatus.FAILED, {"error": f"unknown skill {task.skill_id}"}
    else:
        status, result = await skill(task.input or {}, manifest.id)
    return Envelope(
        asap_version=envelope.asap_version,
        sender=manifest.id,
        recipient=envelope.sender,
        payload_type="task.response",
        payload=TaskResponse(task_id=generate_id(), status=status, result=result).model_dump(),
        correlation_id=envelope.id,
        trace_id=envelope.trace_id,
    )


manifest = Manifest(
    id=settings.AGENT_ID,
    name="Orders Service",
    version="1.4.2",
    description="Order lookups and stock checks",
    capabilities=Capability(skills=[
        Skill(id="lookup_order", description="Look up an order by input.order_id"),
        Skill(id="check_stock", description="Stock level of an order's item, from the inventory agent"),
        Skill(id="reconcile_orders", description="Reconcile every order (long-running, resumable)"),
    ]),
    endpoints=Endpoint(asap=f"{settings.PUBLIC_URL}/asap"),
    auth=AuthScheme(schemes=["bearer"]),
)

registry = HandlerRegistry()
registry.register("task.request", handle_task)

app = create_app(manifest, registry, token_validator=validate_token)


@app.get("/readyz")
async def readyz():
    return {"status": "ready"}
