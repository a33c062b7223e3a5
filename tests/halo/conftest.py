"""Fixtures of the halo tests: a space with a cast of issuers, built once per module."""

from __future__ import annotations

import pytest

from p2pinvite.halo.credentials import Role

from .strategies import Cast, IdentityBuilder, SpaceBuilder


@pytest.fixture(scope="module")
def base() -> Cast:
    owner = IdentityBuilder.create("owner", seed=b"owner")
    a = IdentityBuilder.create("a", seed=b"admin-a")
    b = IdentityBuilder.create("b", seed=b"admin-b")
    editor = IdentityBuilder.create("e", seed=b"editor")
    space = SpaceBuilder.create(owner, "garden", seed=b"garden")
    space.admit(owner, a.public, Role.ADMIN, name="a")
    space.admit(owner, b.public, Role.ADMIN, name="b")
    space.admit(owner, editor.public, Role.EDITOR, name="e")
    return Cast(owner, a, b, editor, space)


@pytest.fixture
def cast(base: Cast) -> Cast:
    return base.copy()
