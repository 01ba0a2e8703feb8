"""The usual access tables of routes (`access=` on `Router.route`; `server.kernel.access` has the
callers): what each kind of caller gets when the route answers `ok` to those it serves.

    @router.patch("/v1/streams/{id}", ..., access=owner_or_admin(200))

Anything else is spelled out: `Access.every(201, anonymous=401, viewer=403)`.
"""

from __future__ import annotations

from server.kernel.access import Access

__all__ = ["Access", "admins", "anyone", "owner_or_admin", "signed_in"]


def anyone(ok: int) -> Access[int]:
    """Every caller, signed in or not."""
    return Access.every(ok)


def signed_in(ok: int) -> Access[int]:
    """Every signed-in caller; anonymous 401."""
    return Access.every(ok, anonymous=401)


def owner_or_admin(ok: int) -> Access[int]:
    """The owner of what the route names and admins; other accounts 403, anonymous 401."""
    return Access.every(ok, anonymous=401, viewer=403, performer=403)


def admins(ok: int) -> Access[int]:
    """Admins only; every other account 403, anonymous 401."""
    return Access.every(403, anonymous=401, admin=ok)
