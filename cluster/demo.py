"""`kairos demo`: one customer's cross-channel journey, showing each decision as it changes.

The seeds' example: browsing on the web changes what the app, the push channel and the call
center agent see, at once. Runs the decision core in-process on the default catalog.
"""
from __future__ import annotations

from kairos.core.catalog import load_default_catalog
from kairos.core.compiler import compile_catalog
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
    engine = DecisionEngine(compile_catalog(load_default_catalog()), seed=42)
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
            best = ", ".join(f"{a.action_id} ({a.priority:.2f})" for a in decision.actions) \
                or "no action"
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
