"""`hermes-fleet down`, finished by the controller it wakes.

The command holds every profile stopped and, when a controller runs, leaves it a request in the same transaction
(meta DOWN_REQUEST: "<epoch> <request>", for that controller alone: one started later has another epoch). Once a
pass that changed nothing sees no gateway of the fleet running, the controller writes `down_done` with the request,
drops it and leaves. The command waits for that exit instead of looking at every profile while the gateways exit
(two looks at the whole fleet, each a share of the CPUs the exits need) and asking the controller to stop after
them. Should `apply` or `start` bring a profile back meanwhile, the controller drops the request (`down_overtaken`)
and stays, and the command fails saying what came back; a controller that leaves without a word (a crash) sends the
command back to looks of its own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fleet.store.db import Store

if TYPE_CHECKING:  # the command's hold and wait need none of the planner's model
    from fleet.plan.model import Action

DOWN_REQUEST = "down_request"
DOWN_DONE = "down_done"
OVERTAKEN = "down_overtaken"


def waited_for(pid: int | None, action: Action) -> bool:
    """Whether `down` waits for this profile's gateway: any that runs, but a native unit's (a profile given to its
    native unit, or being taken from it: the gateway it shows is the unit's, which `down` neither drains nor waits
    for)."""
    from fleet.plan.model import Reason

    return pid is not None and action.reason not in (Reason.RELEASED, Reason.TAKING_OVER)


def leave(store: Store, request: str) -> None:
    """For the controller that runs now (inside the command's hold transaction)."""
    store.set_meta(DOWN_REQUEST, f"{store.epoch} {request}")


def pending(store: Store, epoch: int | None = None) -> str | None:
    """The request left, for the controller of `epoch` (any controller when None)."""
    at, _, request = (store.meta(DOWN_REQUEST) or "").partition(" ")
    if not request or (epoch is not None and at != str(epoch)):
        return None
    return request


def drop(store: Store, request: str, epoch: int, message: str, *, done: bool) -> None:
    """The controller's answer: the fleet is down (`done`), or the request was overtaken."""
    with store.tx():
        if pending(store, epoch) == request:
            store.set_meta(DOWN_REQUEST, "")
        store.journal(DOWN_DONE if done else OVERTAKEN, message, epoch=epoch, data={"request": request})


def finished(store: Store, request: str) -> bool:
    """Whether the controller said the fleet is down for `request`."""
    return _answer(store, DOWN_DONE, request) is not None


def overtaken(store: Store, request: str) -> str | None:
    """What the controller said when it dropped `request` (None: it did not)."""
    return _answer(store, OVERTAKEN, request)


def _answer(store: Store, kind: str, request: str) -> str | None:
    row = store.conn.execute("SELECT message, data FROM journal WHERE kind=? ORDER BY id DESC LIMIT 1",
                             (kind,)).fetchone()
    try:
        return row[0] if row is not None and json.loads(row[1] or "{}").get("request") == request else None
    except ValueError:
        return None
