"""Who gets what from an operation: the answer each kind of caller gets, declared beside the REST
route (`access=` on `Router.route`) or the socket op (`access=` on `OpGroup.op`).

The callers, always these five:

- `anonymous`: no credentials (a REST request without a token; a socket signed in as a guest);
- `viewer`: a signed-in viewer who owns nothing the operation names;
- `performer`: another performer (owns nothing the operation names: someone else's stream, payout
  request or profile, the IDOR probe);
- `owner`: the performer who owns what the operation names (the stream's host, the payout's
  requester, the profile's user; for an operation on the caller's own things, that performer);
- `admin`.

An answer is an HTTP status for a route and `"ok"` or an error code for a socket op, e.g.

    access=Access.every(200, anonymous=401, viewer=403, performer=403)   # owner and admin: 200

`tests/contracts/test_access_table.py` calls every route and op as each caller and fails when a
declaration is missing or an answer differs; the OpenAPI document publishes a route's table as
`x-access`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Caller = Literal["anonymous", "viewer", "performer", "owner", "admin"]
CALLERS: tuple[Caller, ...] = ("anonymous", "viewer", "performer", "owner", "admin")

Outcome = TypeVar("Outcome", int, str)


@dataclass(frozen=True, slots=True)
class Access(Generic[Outcome]):
    """The answer of each caller (see the module docstring)."""

    anonymous: Outcome
    viewer: Outcome
    performer: Outcome
    owner: Outcome
    admin: Outcome

    @classmethod
    def every(cls, outcome: Outcome, **others: Outcome) -> Access[Outcome]:
        """`outcome` for every caller but those named: `Access.every(200, anonymous=401)`."""
        unknown = set(others) - set(CALLERS)
        assert not unknown, f"not callers: {sorted(unknown)}"
        return cls(**{caller: others.get(caller, outcome) for caller in CALLERS})

    def of(self, caller: Caller) -> Outcome:
        answer: Outcome = getattr(self, caller)
        return answer

    def table(self) -> dict[str, Outcome]:
        return {caller: self.of(caller) for caller in CALLERS}
