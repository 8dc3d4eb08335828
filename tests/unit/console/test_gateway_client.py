"""The console's gRPC client against a gateway that records what it is sent."""
from __future__ import annotations

import asyncio

import grpc

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster.console.gateway_client import GatewayClient


class Recording(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self):
        self.outcomes: list[pb.Outcome] = []

    async def Respond(self, request, context):
        seen = any(o.idempotency_key == request.idempotency_key for o in self.outcomes)
        self.outcomes.append(request)
        return pb.OutcomeAck(learned_from=pb.LEARNED_FROM_DUPLICATE if seen
                             else pb.LEARNED_FROM_DECISION)


def test_an_answer_sent_again_carries_the_same_idempotency_key():
    """An agent who sends an answer again after a timeout (the console lets them) must not
    have it recorded twice: the key names the decision and the action, within the gateway's
    256 characters whatever the decision id's length; what the gateway learned comes back,
    so that another outcome for an answered action is not shown as the one recorded."""
    async def main():
        server = grpc.aio.server()
        recording = Recording()
        decision_pb2_grpc.add_DecisionServiceServicer_to_server(recording, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = GatewayClient(f"127.0.0.1:{port}")
        learned = []
        try:
            long_id = "d" * 8448
            for decision_id, action_id, outcome in [
                    (long_id, "warranty", "reject"), (long_id, "warranty", "accept"),
                    (long_id, "upgrade", "accept"), ("d2", "warranty", "accept")]:
                learned.append(await client.respond("key", "ana", "call_center", decision_id,
                                                    action_id, outcome))
        finally:
            await client.close()
            await server.stop(None)
        keys = [o.idempotency_key for o in recording.outcomes]
        assert keys[0] == keys[1] and len(set(keys)) == 3
        assert all(0 < len(k) <= 256 for k in keys)
        assert learned == [pb.LEARNED_FROM_DECISION, pb.LEARNED_FROM_DUPLICATE,
                           pb.LEARNED_FROM_DECISION, pb.LEARNED_FROM_DECISION]
    asyncio.run(main())
