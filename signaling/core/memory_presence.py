"""`MemoryPresence`: the presence contract (`signaling.core.presence`) inside one process."""

from __future__ import annotations

from collections import Counter

from signaling.core.presence import Info, user_key


class MemoryPresence:
    """One process: entries live exactly as long as add/remove say (a process that dies takes its
    clients with it). Bounded by the clients the hub admits (connections times rooms per connection)."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self._rooms: dict[str, dict[str, tuple[str, Info]]] = {}
        self._users: dict[str, Counter[str]] = {}

    async def start(self) -> None:
        return None

    async def add(self, channel: str, client_id: str, info: Info) -> bool:
        room = self._rooms.setdefault(channel, {})
        users = self._users.setdefault(channel, Counter())
        old = room.get(client_id)
        if old is not None:
            self._forget_user(users, old[0])
        key = user_key(client_id, info)
        room[client_id] = (key, dict(info))
        users[key] += 1
        return users[key] == 1

    async def remove(self, channel: str, client_id: str) -> bool:
        room = self._rooms.get(channel)
        if room is None or client_id not in room:
            return False
        key, _ = room.pop(client_id)
        users = self._users[channel]
        self._forget_user(users, key)
        if not room:
            del self._rooms[channel]
            del self._users[channel]
        return key not in users

    async def members(self, channel: str, limit: int) -> dict[str, Info]:
        out: dict[str, Info] = {}
        for client_id, (_, info) in self._rooms.get(channel, {}).items():
            if len(out) >= limit:
                break
            out[client_id] = dict(info)
        return out

    async def counts(self, channel: str) -> tuple[int, int]:
        return len(self._rooms.get(channel, {})), len(self._users.get(channel, {}))

    async def counts_many(self, channels: list[str]) -> dict[str, tuple[int, int]]:
        return {c: await self.counts(c) for c in channels}

    async def nodes(self) -> list[str]:
        return [self.node_id]

    async def close(self) -> None:
        self._rooms.clear()
        self._users.clear()

    @staticmethod
    def _forget_user(users: Counter[str], key: str) -> None:
        users[key] -= 1
        if users[key] <= 0:
            del users[key]
