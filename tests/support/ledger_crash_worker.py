"""Crash-test worker: streams a known sequence of tips through an engine until it is killed.

    python -m tests.support.ledger_crash_worker DSN NAMESPACE PAYERS_JSON PERFORMER COUNT

Tip i is a 2-leg linked chain with ids derived from NAMESPACE and i, so the parent can resubmit
exactly the same transfers. Prints `ok i` once tip i is acknowledged (after COMMIT).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from ledger import SYSTEM_ACCOUNT_IDS, AccountKind, Code, Engine, Result, Transfer, TransferFlags

CONCURRENCY = 32


def tip(namespace: uuid.UUID, index: int, payers: list[int], performer: int) -> list[Transfer]:
    payer = payers[index % len(payers)]
    return [Transfer(uuid.uuid5(namespace, f"{index}-share"), payer, performer, 8, Code.TIP, TransferFlags.LINKED),
            Transfer(uuid.uuid5(namespace, f"{index}-fee"), payer, SYSTEM_ACCOUNT_IDS[AccountKind.PLATFORM_REVENUE],
                     2, Code.FEE)]


async def main(dsn: str, namespace: uuid.UUID, payers: list[int], performer: int, count: int) -> None:
    engine = Engine(dsn, batch_wait_ms=2)
    await engine.start()
    indexes = iter(range(count))

    async def submitter() -> None:
        for index in indexes:  # shared iterator: each index is taken once
            outcomes = await engine.submit(tip(namespace, index, payers, performer))
            if all(o.result is Result.OK for o in outcomes):
                print(f"ok {index}", flush=True)

    await asyncio.gather(*(submitter() for _ in range(CONCURRENCY)))
    await engine.close()


if __name__ == "__main__":
    dsn, namespace, payers, performer, count = sys.argv[1:6]
    asyncio.run(main(dsn, uuid.UUID(namespace), json.loads(payers), int(performer), int(count)))
