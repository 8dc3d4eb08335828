"""`kairos demo`: one customer's cross-channel journey, showing each decision as it changes.

The seeds' example: browsing on the web changes what the app, the push channel and the call
center agent see, at once. By default the journey goes over gRPC to a running Kairos (`kairos
up`), live: events carry real times, a watch stream shows what is pushed without polling, and
the cart-abandonment timer fires on its own. `--local` replays a longer journey on the decision
core in-process instead.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
import uuid

import grpc

from kairos.core.compiler import default_compiled
from kairos.core.engine import DecisionEngine

T0 = 1_795_629_600.0  # 2026-11-20T18:00:00Z
M, H, D = 60.0, 3600.0, 86400.0
CUSTOMER = "ana"
WATCHED = [("web", "hero"), ("app", "home"), ("push", "notification"),
           ("call_center", "agent_screen")]

JOURNEY = [
    (-90 * D, "profile_updated", {"tier": "silver", "marketing_opt_in": True,
                                  "email_opt_in": True, "push_opt_in": True}),
    (-40 * D, "purchase", {"order_id": "o-1", "amount": 420.0, "category": "electronics",
                           "fulfilment": "delivery"}),
    (0, "page_view", {"category": "electronics", "price": 199.0}),
    (2 * M, "page_view", {"category": "electronics", "price": 249.0}),
    (4 * M, "page_view", {"category": "electronics", "price": 199.0}),
    (6 * M, "add_to_cart", {"product_id": "tv-55", "category": "electronics", "price": 199.0}),
    (40 * M, "app_open", {}),
    (50 * M, "purchase", {"order_id": "o-2", "amount": 199.0, "category": "electronics",
                          "fulfilment": "delivery"}),
    (2 * D, "delivery_update", {"order_id": "o-2", "status": "delayed"}),
    (2 * D + 1 * H, "complaint", {"topic": "delivery", "severity": "high"}),
    (2 * D + 2 * H, "call_started", {"reason": "cancel"}),
]


def run() -> int:
    engine = DecisionEngine(default_compiled(), seed=42)
    shown: dict[str, str] = {}
    print(f"Kairos demo: customer '{CUSTOMER}' on catalog "
          f"'{engine.compiled.catalog.name}' {engine.compiled.version}, "
          f"{engine.implementation} kernel\n")
    for offset, event_type, attributes in JOURNEY:
        t = T0 + offset
        engine.apply([engine.encode_event(CUSTOMER, event_type, t, attributes)])
        context = {"intent": "cancel"} if event_type == "call_started" else {}
        changes = []
        for channel, placement in WATCHED:
            decision = engine.decide(CUSTOMER, channel, placement, context, now=t)
            best = describe(decision.actions)
            if shown.get(channel) != best:
                shown[channel] = best
                changes.append(f"    {channel:<12} → {best}")
        print(f"{_clock(offset):>10}  {event_type}")
        print("\n".join(changes) if changes else "    (no change)")
    return 0


def _clock(offset: float) -> str:
    sign = "-" if offset < 0 else "+"
    offset = abs(offset)
    if offset >= D:
        return f"{sign}{offset // D:.0f}d{(offset % D) // H:02.0f}h"
    return f"{sign}{offset // H:.0f}h{(offset % H) // M:02.0f}m"


def describe(actions) -> str:
    return ", ".join(f"{a.action_id} ({a.priority:.2f})" for a in actions) or "no action"


# The live journey: offsets from now; "known" events name the customer, "cookie" ones come from
# a browser nobody has identified yet (an anonymous profile) until the customer logs in and
# LinkIdentity merges the two. The add-to-cart is backdated so that the cart-abandonment timer
# (30 minutes) falls due a few seconds into the demo.
LIVE = [
    (-90 * D, "known", "profile_updated", {"tier": "silver", "marketing_opt_in": True,
                                           "email_opt_in": True, "push_opt_in": True}, {}),
    (-40 * D, "known", "purchase", {"order_id": "o-1", "amount": 420.0,
                                    "category": "electronics", "fulfilment": "delivery"}, {}),
    (-35 * M, "cookie", "page_view", {"category": "electronics", "price": 199.0}, {}),
    (-33 * M, "cookie", "page_view", {"category": "electronics", "price": 249.0}, {}),
    (-30 * M + 4, "cookie", "add_to_cart", {"product_id": "tv-55", "category": "electronics",
                                            "price": 199.0}, {}),
    (-1, "login", "", {}, {}),
    (0, "known", "app_open", {}, {}),
]
LATER = [
    ("complaint", {"topic": "delivery", "severity": "high"}, {}),
    ("call_started", {"reason": "cancel"}, {"intent": "cancel"}),
]
TIMER_WAIT_S = 8.0
READY_TIMEOUT_S = 5.0
PUSH_WAIT_S = 0.3


def run_remote(target: str) -> int:
    from kairos.cluster.cli.remote import Remote, tls_hint
    from kairos.cluster.cli.targets import split_target
    remote = Remote(target)
    try:
        remote.wait_ready(READY_TIMEOUT_S)
    except (grpc.FutureTimeoutError, OSError) as exc:
        remote.close()
        try:  # at a TCP target, gRPC's wait comes after a connection opened: something answers
            split_target(target)
            opened = isinstance(exc, grpc.FutureTimeoutError)
        except ValueError:
            opened = False
        if opened:
            print(f"error: {target}: no gRPC connection within {READY_TIMEOUT_S:.0f} s\n"
                  f"({tls_hint()})", file=sys.stderr)
        else:
            print(f"Kairos is not running: no gateway answers at {target} (`kairos up` starts "
                  f"one)", file=sys.stderr)
        return 1
    customer = f"ana-{uuid.uuid4().hex[:6]}"
    cookie = ("cookie", uuid.uuid4().hex[:12])
    pushed: queue.Queue = queue.Queue()
    stream = remote.watch(customer, "push")
    threading.Thread(target=_follow, args=(stream, pushed), daemon=True).start()
    time.sleep(0.5)  # let the watch register before the first event
    print(f"Kairos demo over gRPC ({target}): customer '{customer}', watching the push "
          f"channel\n")
    shown: dict[str, str] = {}
    start = time.time()
    for offset, who, event_type, attributes, context in LIVE:
        if who == "login":
            merged = remote.link(cookie, customer).merged
            print(f"{_clock(offset):>10}  login: LinkIdentity(cookie {cookie[1]} → {customer})"
                  f"{': the anonymous profile merged' if merged else ''}")
        else:
            _step(remote, customer if who == "known" else cookie, start + offset, event_type,
                  attributes, context, shown, offset)
        _print_pushes(pushed, PUSH_WAIT_S)
    print("\n(waiting: 30 minutes after the add-to-cart without a purchase, the shard's "
          "cart_abandoned timer fires)")
    if not _print_pushes(pushed, TIMER_WAIT_S, until="cart_recovery_push"):
        print("    (no push of cart_recovery_push seen: the timer's re-evaluation may have "
              "drawn the offer the push channel already showed, at random as Thompson sampling "
              "does, and a watch is pushed changes only; the next decision draws again)")
    print(f"{'now':>10}  after the timer")
    _show(remote, customer, {}, shown)
    print()
    for event_type, attributes, context in LATER:
        _step(remote, customer, time.time(), event_type, attributes, context, shown, 0)
        _print_pushes(pushed, PUSH_WAIT_S)
    stream.cancel()
    return 0


def _step(remote, customer, when, event_type, attributes, context, shown, offset) -> None:
    """Send the event as `customer` (an id, or a cookie alias) and show what changed."""
    remote.ingest(customer, event_type, when, attributes)
    who = f" (anonymous, cookie {customer[1]})" if isinstance(customer, tuple) else ""
    print(f"{_clock(offset) if offset else 'now':>10}  {event_type}{who}")
    _show(remote, customer, context, shown)


def _show(remote, customer, context, shown) -> None:
    changes = []
    for channel, placement in WATCHED:
        best = describe(remote.decide(customer, channel, placement, context).actions)
        if shown.get(channel) != best:
            shown[channel] = best
            changes.append(f"    {channel:<12} → {best}")
    print("\n".join(changes) if changes else "    (no change)")


def _print_pushes(pushed: queue.Queue, wait_s: float, until: str | None = None) -> bool:
    """Print what the watch stream received within `wait_s` (or until an action shows);
    whether `until` showed."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            decision = pushed.get(timeout=0.05)
        except queue.Empty:
            continue
        print(f"    ⇢ pushed on the watch stream: {decision.channel} → "
              f"{describe(decision.actions)}")
        if until and any(a.action_id == until for a in decision.actions):
            return True
    return False


def _follow(stream, pushed: queue.Queue) -> None:
    try:
        for decision in stream:
            pushed.put(decision)
    except grpc.RpcError:
        pass  # cancelled at the end of the demo
