"""The catalog compiles of a gateway's admin calls (ValidateCatalog, PutCatalog,
RollbackCatalog): one at a time, each in a process of its own, stopped past
settings.CATALOG_COMPILE_S. A catalog change (PutCatalog, RollbackCatalog) waits its turn, in
the order they came, within its caller's deadline; a ValidateCatalog, which any status:read
key may send, is refused while another compile runs or waits, so it can never hold up a deploy
for longer than one compile.

Compiling holds the GIL in long stretches of C (the YAML parser's): in a thread of the gateway,
the shipped 50 KiB catalog stopped its event loop for tens of ms at a time, a text of a
request's 1 MiB for seconds, and several at once failed most Decides with 50 ms deadlines. A
process (`python -m kairos.cluster.gateway.compiling SOURCE STRICT`, the text on its stdin,
the catalog's summary or its CatalogError as JSON on its stdout) costs about 0.3 s of another
core to start, and leaves the loop alone. A compile whose caller went away is killed. A
process that fails otherwise (kairos not importable in it, killed for its memory, a bug) is
CompilerFailed, naming how it ended and its last line on stderr; the tail of its stderr is
logged.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import NamedTuple

from kairos.core.compiler import CompiledCatalog, compiled_from_text
from kairos.core.errors import CatalogError

from kairos.cluster.settings import CATALOG_COMPILE_S
from kairos.cluster.transport.client import Busy

BUSY = ("this gateway compiles one catalog at a time and is compiling another now: try again "
        "in a moment")
COMPILER = (sys.executable, "-m", __name__)  # the compiling process's command, less its arguments
STDERR_LOGGED = 4096  # characters of a failed compiler's stderr logged, its last
log = logging.getLogger("kairos.gateway")


class TooLong(Exception):
    """A compile stopped at CATALOG_COMPILE_S: a property of the text (its size, its
    nesting), not a passing condition."""


class CompilerFailed(Exception):
    """The compiler's process ended without an answer: a failure of the gateway, not of the
    catalog."""


class Summary(NamedTuple):
    """What the admin calls answer of a compiled catalog."""

    version: str
    name: str
    actions: int
    channels: int
    event_types: int
    features: int

    @classmethod
    def of(cls, compiled: CompiledCatalog) -> "Summary":
        catalog = compiled.catalog
        return cls(compiled.version, catalog.name, len(catalog.actions), len(catalog.channels),
                   len(catalog.events), len(catalog.features))


class OneCompile:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # its waiters go in the order they came
        self._wanted = 0  # compiles running or waiting

    async def compile(self, text: str, source: str = "<catalog>", strict: bool = False,
                      wait: bool = False) -> Summary:
        """compiled_from_text(text, source, strict)'s summary, or its CatalogError; TooLong
        past CATALOG_COMPILE_S. Busy while another compile runs or waits; with `wait`, once
        those before it are done (the caller's deadline cancels the wait)."""
        if self._wanted and not wait:
            raise Busy(BUSY)
        self._wanted += 1
        try:
            async with self._lock:
                return await _compiled_apart(text, source, strict)
        finally:
            self._wanted -= 1


async def _compiled_apart(text: str, source: str, strict: bool) -> Summary:
    process = await asyncio.create_subprocess_exec(
        *COMPILER, source, "strict" if strict else "",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(CATALOG_COMPILE_S):
            out, err = await process.communicate(text.encode())
    except TimeoutError:
        raise TooLong(f"the catalog took longer than {CATALOG_COMPILE_S:g} s "
                      f"(KAIROS_CATALOG_COMPILE_S) to compile and was stopped") from None
    finally:
        if process.returncode is None:  # its caller went away, or it ran too long
            process.kill()
            await process.wait()
    try:
        answer = json.loads(out) if process.returncode == 0 else {}
    except ValueError:
        answer = {}
    if "error" in answer:
        raise CatalogError(**answer["error"])
    if "summary" not in answer:
        raise _failed(process.returncode, err.decode(errors="replace"))
    return Summary(**answer["summary"])


def _failed(code: int, stderr: str) -> CompilerFailed:
    """What the caller is told of a compiler's process that gave no answer; its stderr's tail
    is logged."""
    ended = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    log.error("the catalog compiler's process failed (%s); its stderr ends:\n%s", ended,
              stderr[-STDERR_LOGGED:])
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return CompilerFailed(f"the catalog compiler's process failed ({ended})"
                          + (f": {last[:200]}" if last else ""))


def main() -> None:
    source, strict = sys.argv[1], sys.argv[2] == "strict"
    try:
        answer = {"summary": Summary.of(compiled_from_text(sys.stdin.read(), source, strict))
                  ._asdict()}
    except CatalogError as exc:
        answer = {"error": {field: getattr(exc, field) for field in
                            ("reason", "path", "source", "line", "column", "action_id")}}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
