"""The controller's catalog versions (a part of Controller: controller.py): PutCatalog and
RollbackCatalog, each a two-phase switch of every shard and the learner, one at a time (under
the reconfiguration lock, where the running and previous catalogs are read too).

- A catalog is compiled on a thread: a large one takes seconds, and this loop serves the
  gateways' long polls and the control loop meanwhile.
- The same catalog sent again while it runs (a retry after DEADLINE_EXCEEDED) is not switched
  again: it would become its own rollback target. Nor is it refused by the checks newer than
  it (load_catalog's `strict`), which only a new catalog must pass: a catalog taken before an
  upgrade added them still runs. Evidence it brings replaces the running
  version's (it is about that version), and is saved.
- A version names one text for the life of the store: one the cluster ran (the last
  VERSIONS_KEPT switched from, saved with its state, and the running one) is refused with other
  text. Shards, deltas and published models carry only the version: a learner that Ray
  restarts, or a shard lagging behind, would put the models of one text in the other's rows.
- A request may name the version it expects to switch from (PutCatalog) or to (RollbackCatalog),
  checked under the lock: a rollback retried after it was done would otherwise switch back to
  the catalog it rolled back from, and a put queued behind another switch would undo a
  rollback an operator made meanwhile. A rollback to the running version is done already.
- Phase one: every shard prepares. One that refuses the text (a CatalogError or ValueError)
  stops the switch with every shard on the old version (CatalogRefused: sent again, it would
  be refused again); one that fails otherwise (does not answer: stopped, restarting, wedged,
  recovering) must not hold up the others: it is left lagging, as is one that misses the
  commit, and caught up by the control loop (a shard that starts again starts on the running
  catalog). One shard that prepared is enough: a rollback in an incident must not wait for
  the shards that are wedged. None is not: no shard has run the text, and an answer of OK
  would have the gateways told of a catalog nothing serves (Unavailable, nothing switched).
- The decision (the new catalog, and the map version that tells the gateways of it) is saved
  before the first commit: a controller that crashes after it finishes the switch on resume,
  and publishes that map version, so gateways that saw the old one learn of the new catalog.
  A save that fails undoes the switch in memory and puts the learner back: the store stays
  the truth, and a retry switches again (returning early as "running already", it would save
  nothing, and a restart would switch the shards back). As any Unavailable, it may have taken
  effect even so (written before the store's answer was lost): a restart then finishes it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from kairos.core.compiler import CompiledCatalog, compiled_from_text

from kairos.cluster.control.catalog_identity import VersionsRun
from kairos.cluster.control.lagging import on_each, named
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable

log = logging.getLogger("kairos.controller")


class CatalogRefused(ValueError):
    """A shard refused the catalog's text: sent again, it would be refused again."""


async def _compiled(text: str) -> CompiledCatalog:
    """The catalog in `text`, compiled off the event loop (CatalogError), not strict; its
    refusals are not logged as running here, where it is checked (the shards and the learner
    that take it up log them)."""
    return await asyncio.to_thread(compiled_from_text, text, "<catalog>", False, True)


async def _version(text: str) -> str:
    """The version of the catalog in `text` (CatalogError)."""
    return (await _compiled(text)).version


class Catalogs:
    """Controller's catalog switches (a part of Controller: controller.py)."""

    versions_run = VersionsRun()  # replaced at each switch, never changed in place (saved.py)

    async def put_catalog(self, catalog_text: str, evidence: dict[str, str] | None = None,
                          expected_version: str | None = None) -> str:
        """Validate, then switch every shard and the learner; the new version, with `evidence`
        (the gateway's {json, summary} of a replay report) kept with it. ValueError for
        other content under a version the cluster ran (the module's docstring), and for a
        running version other than `expected_version` (when given) unless this catalog runs
        already."""
        compiled = await _compiled(catalog_text)  # CatalogError: stop
        version = compiled.version
        async with self._reconfiguring:
            if version == self.catalog_version:
                if catalog_text != self.catalog_text:
                    raise ValueError(f"catalog {version!r} runs with other text: give it a "
                                     f"new version")
                if evidence and evidence != self.evidence:
                    await self._keep_evidence(evidence)
                # before the expectation: a retry of a put that was done; and before the
                # checks newer than the text, which would refuse what the cluster runs
                return version
            ran = await self._ran()
            # a new catalog: those checks too; one the cluster ran (pushed again to go back to
            # it) is a saved one, as a rollback to it would be
            if compiled.catalog.refusals and not ran.knows(catalog_text):
                raise compiled.catalog.refusals[0]
            if expected_version is not None and expected_version != self.catalog_version:
                raise ValueError(f"catalog {self.catalog_version!r} runs, not the expected "
                                 f"{expected_version!r}: {version!r} was not switched to")
            ran.check(version, catalog_text)
            # with the previous one in: else it would be protected for this switch only
            await self._switch(catalog_text, version, evidence or {}, ran)
        return version

    async def check_first_catalog(self) -> None:
        """A new store's first catalog comes in new, as PutCatalog's would: the checks newer
        than saved catalogs refuse it too (CatalogError). A restart resumes the saved catalog
        and is never refused (`kairos up`/`start --catalog` only warn of those checks)."""
        refusals = (await _compiled(self.catalog_text)).catalog.refusals
        if refusals:
            raise refusals[0]

    async def get_catalog(self) -> dict[str, Any]:
        return {"version": self.catalog_version, "text": self.catalog_text,
                "has_previous": self.previous_catalog is not None,
                "previous_version": await self.previous_version(),
                "evidence": self.evidence.get("json", ""),
                "ran_digests": (await self._ran()).digests()}

    async def _ran(self) -> VersionsRun:
        """The versions run, with the previous one (saved by an older release, it may not be
        among them)."""
        ran, previous = self.versions_run, self.previous_catalog
        if previous is not None and not ran.knows(previous):
            ran = ran.with_run(await _version(previous), previous)
        return ran

    async def previous_version(self) -> str:
        """The version a rollback goes back to ("": none), for an operator's `--to`."""
        previous = self.previous_catalog
        return "" if previous is None else await _version(previous)

    async def rollback_catalog(self, to_version: str | None = None) -> str:
        """Switch back to the previous catalog; its version. With `to_version`: nothing to
        do when it runs, and ValueError when the previous catalog is another one."""
        async with self._reconfiguring:
            if to_version is not None and to_version == self.catalog_version:
                return to_version
            if self.previous_catalog is None:
                raise ValueError("there is no previous catalog version to roll back to")
            text = self.previous_catalog
            version = await _version(text)
            if to_version is not None and version != to_version:
                raise ValueError(f"the previous catalog is {version!r}, not {to_version!r} "
                                 f"(catalog {self.catalog_version!r} runs): nothing was "
                                 f"switched")
            await self._switch(text, version, self.previous_evidence)
        return version

    async def _keep_evidence(self, evidence: dict[str, str]) -> None:
        """`evidence` for the running version, saved (on a failure, the one before stays)."""
        kept, self.evidence = self.evidence, evidence
        try:
            await self._save()
        except BaseException:
            self.evidence = kept
            raise

    async def _switch(self, text: str, version: str, evidence: dict[str, str],
                      ran: VersionsRun | None = None) -> None:
        """Switch every shard and the learner to the catalog `text` of `version` (the module's
        docstring), adding the running one to `ran` (the versions run it was checked against;
        `versions_run` if not given); under the reconfiguration lock."""
        shards = self.shards
        failed = await on_each(self.backend, shards, lambda s: s.prepare(text))
        refused = {n: exc for n, exc in failed.items() if isinstance(exc, ValueError)}
        if refused:
            raise CatalogRefused(f"catalog {version} was not switched: " + named(refused))
        if failed and len(failed) == len(shards):
            raise Unavailable(f"catalog {version} was not switched: no shard prepared it: "
                              + named(failed))
        try:
            await self.backend.learner().switch(text)
        except StoreUnavailable as exc:  # it has not read its saved posterior yet
            raise Unavailable(f"catalog {version} was not switched: the learner: "
                              f"{exc}") from exc
        if failed:
            log.warning("catalog %s is not prepared on %s; the control loop switches them",
                        version, named(failed))
        before = (self.catalog_text, self.previous_catalog, self.catalog_version,
                  self.evidence, self.previous_evidence, set(self.lagging.catalog), self.map,
                  self.versions_run)
        ran = self.versions_run if ran is None else ran
        self.versions_run = ran.with_run(self.catalog_version, self.catalog_text)
        self.previous_catalog, self.catalog_text = self.catalog_text, text
        self.catalog_version = version
        self.previous_evidence, self.evidence = self.evidence, evidence
        self.lagging.catalog.update(shards)
        # gateways learn it by long poll (published after the commits); put back with the rest
        # if the save fails, as no one was given it: a shard started later on it would
        # answer MOVED to a version no client could ever get
        self.map = self.map.apply([], self.map.shards)
        try:
            await self._save()  # decided: from here on every shard ends on this version
        except BaseException as exc:
            (self.catalog_text, self.previous_catalog, self.catalog_version,
             self.evidence, self.previous_evidence, self.lagging.catalog, self.map,
             self.versions_run) = before
            if not isinstance(exc, Exception):
                raise  # cancelled: the control loop puts the learner back
            await self._learner_told()
            if isinstance(exc, StoreUnavailable):
                raise Unavailable(f"catalog {version} was not switched: the store did not "
                                  f"take it: {exc}") from exc
            raise
        await self.lagging.commit_catalog([s for s in shards if s not in failed], text,
                                          version, prepared=True)
        await self._publish()
