"""Account ids by (kind, owner): get-or-create once, then served from a bounded cache.

An account's id never changes once created, so a cached id is never stale; only the LRU bound
(`ledger_account_cache_max`) decides what is kept. Saves a round trip per tip on the hot path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from uuid import UUID

from ledger.accounts import Db, create_accounts
from ledger.model import SYSTEM_ACCOUNT_IDS, AccountKind, NewAccount


class AccountDirectory:
    def __init__(self, db: Db, max_entries: int) -> None:
        assert max_entries >= 1
        self._db = db
        self._max = max_entries
        self._ids: OrderedDict[tuple[AccountKind, UUID], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    async def id(self, kind: AccountKind, owner: UUID) -> int:
        [found] = await self.ids([(kind, owner)])
        return found

    async def ids(self, wanted: Sequence[tuple[AccountKind, UUID]]) -> list[int]:
        """The id of each (kind, owner) account, creating the missing ones, in the order asked."""
        for kind, _ in wanted:
            assert kind not in SYSTEM_ACCOUNT_IDS, "system accounts have fixed ids: use SYSTEM_ACCOUNT_IDS"
        missing = list(dict.fromkeys(k for k in wanted if k not in self._ids))
        if missing:
            created = await create_accounts(self._db, [NewAccount(kind, owner) for kind, owner in missing])
            for key, account in zip(missing, created, strict=True):
                self._ids[key] = account.id
        out: list[int] = []
        for key in wanted:
            self._ids.move_to_end(key)
            out.append(self._ids[key])
        while len(self._ids) > self._max:
            self._ids.popitem(last=False)
        return out
