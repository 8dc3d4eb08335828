"""The README's gRPC example, as a channel developer copies it, runs against a gateway (one
in-process, its address put where the README has `kairos up`'s)."""
from __future__ import annotations

import re
from pathlib import Path

from tests.support.inprocess_gateway import serving

README = Path(__file__).resolve().parents[3] / "README.md"


def test_the_readmes_grpc_example_runs():
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example, = [s for s in snippets if "decision_pb2_grpc" in s]
    with serving() as (gateway, _):
        code = example.replace("127.0.0.1:50051", f"127.0.0.1:{gateway.port}")
        exec(compile(code, "README.md", "exec"), {})
