"""Password policy and argon2id hashing (argon2-cffi), off the event loop and bounded.

Hashing costs tens of milliseconds and tens of MiB by design, so it runs on a small thread pool
(argon2-cffi releases the GIL) and the number of hashes waiting or running is capped: past the cap
a request is refused with 503 rather than queueing memory without bound.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from server.kernel.errors import ApiError, ErrorCode
from server.kernel.settings import Settings

T = TypeVar("T")
# The mix rule's character classes as regular expressions, so that the OpenAPI document states the
# rule exactly (JSON Schema patterns have no Unicode case classes): a-z, A-Z, 0-9 and anything else.
_MIX_CLASSES = ("[a-z]", "[A-Z]", "[0-9]", "[^a-zA-Z0-9]")
# Two characters of different classes, in either order: what a password must contain somewhere.
MIX_PATTERN = "|".join(f"{a}[\\s\\S]*{b}" for a, b in itertools.permutations(_MIX_CLASSES, 2))
_MIX = re.compile(MIX_PATTERN)
MIX_RULE = "must mix at least two of: lower case a-z, upper case A-Z, digits, other characters"


def policy_problems(password: str, email: str, settings: Settings) -> list[str]:
    """What is wrong with a new password (empty when acceptable)."""
    problems: list[str] = []
    if len(password) < settings.password_min_chars:
        problems.append(f"must be at least {settings.password_min_chars} characters")
    if len(password) > settings.password_max_chars:
        problems.append(f"must be at most {settings.password_max_chars} characters")
    if not _MIX.search(password):
        problems.append(MIX_RULE)
    if password.strip().casefold() == email.strip().casefold():
        problems.append("must not be the email address")
    return problems


def check_policy(password: str, email: str, settings: Settings) -> None:
    problems = policy_problems(password, email, settings)
    if problems:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "password does not meet the policy",
                       details={"errors": [{"field": "password", "issue": p} for p in problems]})


class Passwords:
    """argon2id hashing with the configured cost, run on a bounded thread pool."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int, threads: int, queue_max: int) -> None:
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism,
                                     type=Type.ID)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._queue_max = queue_max
        self._in_flight = 0  # touched only from event-loop threads' callbacks below
        # Verified against for unknown emails so that a miss costs what a hit costs.
        self._dummy = self.hasher.hash("greenroom-dummy-password-for-timing")

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._in_flight >= self._queue_max:
            raise ApiError(ErrorCode.OVERLOADED, "too many password checks in progress; retry shortly")
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self._in_flight -= 1

    def hash_now(self, password: str) -> str:
        """Synchronous hash (CLI, fixtures); request paths use `hash`."""
        return self.hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await self._run(functools.partial(self.hasher.hash, password))

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """Constant-time check (argon2's own comparison); `stored=None` burns the same time and fails."""
        if stored is None:
            await self._run(functools.partial(self._verify, self._dummy, password))
            return False
        return await self._run(functools.partial(self._verify, stored, password))

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True


@functools.lru_cache(maxsize=8)  # one per distinct cost configuration in a process
def _passwords(time_cost: int, memory_kib: int, parallelism: int, threads: int, queue_max: int) -> Passwords:
    return Passwords(time_cost, memory_kib, parallelism, threads, queue_max)


def passwords_for(settings: Settings) -> Passwords:
    return _passwords(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism,
                      settings.password_hash_threads, settings.password_queue_max)
