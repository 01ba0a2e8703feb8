"""Users: profiles (own and others'), profile edits, preferences."""

from __future__ import annotations

import functools
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from rest.accounts.auth import UserOut
from rest.accounts.user_fields import Bio, Country, DateOfBirth, DisplayName, Url, Username
from rest.framework.access import owner_or_admin, signed_in
from rest.framework.params import uuid_param
from rest.framework.responses import ok
from rest.framework.router import Call, Router
from rest.framework.schema import JsonObject, Schema, not_null
from server.accounts import users
from server.accounts.tokens import token_service
from server.kernel import keys
from server.kernel.errors import ErrorCode
from signaling.features.sessions import sessions

router = Router("users")


class PublicUserOut(BaseModel):
    """An account as other users see it (owners and admins get every field of `UserOut`)."""

    id: str
    display_name: str
    username: str | None
    role: Literal["viewer", "performer", "admin"]
    profile_image_url: str | None
    bio: str | None
    created_at: str


class UserPatch(Schema):
    """Fields to change; absent fields stay, `null` clears an optional one (username, bio, the image,
    country, date of birth; the others cannot be null). role, status, email_verified and
    date_of_birth are for admins."""

    # the document states the one rule across fields: not both image fields
    model_config = ConfigDict(json_schema_extra={"not": {"required": ["profile_image_url", "avatar_url"]}})

    display_name: DisplayName | None = Field(None, json_schema_extra=not_null)
    username: Username | None = None
    bio: Bio | None = None
    profile_image_url: Url | None = None
    avatar_url: Url | None = Field(None, description="Alias of profile_image_url.")
    country: Country | None = None
    role: Literal["viewer", "performer", "admin"] | None = Field(None, json_schema_extra=not_null)
    status: Literal["active", "suspended", "banned"] | None = Field(None, json_schema_extra=not_null)
    email_verified: bool | None = Field(None, json_schema_extra=not_null)
    date_of_birth: DateOfBirth | None = None

    @model_validator(mode="after")
    def _one_image_field(self) -> UserPatch:
        if {"avatar_url", "profile_image_url"} <= self.model_fields_set:
            raise ValueError("give profile_image_url or avatar_url, not both")
        return self

    def changes(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.model_fields_set}
        if "avatar_url" in out:
            out["profile_image_url"] = out.pop("avatar_url")
        return out


class Preferences(RootModel[JsonObject]):
    """A JSON object; PATCH merges it in (RFC 7386: `null` deletes a key). No NUL (U+0000) in its
    strings or keys, integers within 64 bits, finite numbers, nested at most GREENROOM_JSON_MAX_DEPTH."""


USER = {"id": uuid_param("user")}


@router.patch("/v1/me", summary="Change the caller's profile (display name, bio, avatar URL, ...)",
              body=UserPatch, response=UserOut, access=signed_in(200),
              errors=(ErrorCode.PERMISSION_DENIED, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT))
async def patch_me(call: Call[UserPatch]) -> web.StreamResponse:
    user = await users.update_user(call.app[keys.DB], call.user, call.user.user_id, call.body.changes(),
                                   token_service(call.app), functools.partial(sessions.account_revoked, call.app))
    return ok(user.private())


@router.get("/v1/users/{id}", summary="A user's profile (public fields; owners and admins see all)",
            params=USER, response=PublicUserOut, access=signed_in(200))
async def get_user(call: Call[None]) -> web.StreamResponse:
    user = await users.get_visible_user(call.app[keys.DB], call.user, call.path.uuid("id"))
    return ok(user.view_for(call.user))


@router.patch("/v1/users/{id}", summary="Change a profile (own, or any as admin; admins set role and status)",
              params=USER, body=UserPatch, response=PublicUserOut, access=owner_or_admin(200),
              errors=(ErrorCode.PERMISSION_DENIED, ErrorCode.CONFLICT))
async def patch_user(call: Call[UserPatch]) -> web.StreamResponse:
    user = await users.update_user(call.app[keys.DB], call.user, call.path.uuid("id"), call.body.changes(),
                                   token_service(call.app), functools.partial(sessions.account_revoked, call.app))
    return ok(user.view_for(call.user))


@router.get("/v1/users/{id}/preferences", summary="A user's preferences (own, or any as admin)",
            params=USER, response=Preferences, errors=(ErrorCode.PERMISSION_DENIED,), access=owner_or_admin(200))
async def get_preferences(call: Call[None]) -> web.StreamResponse:
    prefs = await users.get_preferences(call.app[keys.DB], call.user, call.path.uuid("id"))
    return ok(prefs)


@router.patch("/v1/users/{id}/preferences", summary="Merge changes into a user's preferences (RFC 7386)",
              params=USER, body=Preferences, response=Preferences, errors=(ErrorCode.PERMISSION_DENIED,),
              access=owner_or_admin(200))
async def patch_preferences(call: Call[Preferences]) -> web.StreamResponse:
    prefs = await users.update_preferences(call.app[keys.DB], call.app[keys.SETTINGS], call.user,
                                           call.path.uuid("id"), call.body.root)
    return ok(prefs)
