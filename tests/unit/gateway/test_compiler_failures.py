"""A catalog compiler process that dies (kairos not importable in it, killed by the kernel for
its memory, a bug that is not a CatalogError) ends the admin call INTERNAL with a short reason,
and the tail of what the process wrote on stderr goes to the gateway's log: the caller got
UNKNOWN from a RuntimeError or a JSON decode error, and the reason was lost. Through gRPC to
the in-process gateway; the compiler's command replaced by one that fails."""
from __future__ import annotations

import logging
import sys

import grpc
import pytest

from kairos.cluster.gateway import compiling
from kairos.v1 import admin_pb2

from tests.support.inprocess_gateway import serving

FAILING = {
    "exits": ("import sys; print('Traceback (most recent call last):', file=sys.stderr); "
              "print('ZeroDivisionError: the compiler broke', file=sys.stderr); sys.exit(3)",
              "exit code 3", "ZeroDivisionError: the compiler broke"),
    "half an answer": ("import sys; sys.stdout.write('{\"summ'); "
                       "sys.stderr.write('MemoryError'); sys.exit(1)",
                       "exit code 1", "MemoryError"),
    "killed": ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
               "killed by signal 9", ""),
}


@pytest.mark.parametrize("how", list(FAILING))
def test_a_compiler_that_dies_ends_the_call_internal_saying_why(monkeypatch, caplog, how):
    code, said, wrote = FAILING[how]
    monkeypatch.setattr(compiling, "COMPILER", (sys.executable, "-c", code))
    with serving() as (_, channel), caplog.at_level(logging.ERROR, "kairos.gateway"):
        validate = channel.unary_unary("/kairos.v1.AdminService/ValidateCatalog",
                                       request_serializer=admin_pb2.CatalogText.SerializeToString,
                                       response_deserializer=admin_pb2.CatalogInfo.FromString)
        with pytest.raises(grpc.RpcError) as failed:
            validate(admin_pb2.CatalogText(yaml="actions: []"), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details().startswith(f"the catalog compiler's process failed ({said})")
    assert wrote in failed.value.details()
    assert f"({said})" in caplog.text and wrote in caplog.text
