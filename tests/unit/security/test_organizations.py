"""allowed_organizations: ids, an explicit "*" for any, and a warning when left unset."""

from __future__ import annotations

import logging

import pytest

from app.security.integrations import (
    IntegrationConfigError,
    IntegrationRegistry,
    parse_integrations,
)

ORG = "5B1C6A0E-2F4D-4C8E-9B7A-1D2E3F4A5B6C"
OTHER = "0f5e8a4c-9d1b-4e2a-8c3f-7a6b5d4e3f21"


def one(**fields: object) -> str:
    import json

    return json.dumps([{"name": "acme", "api_key": "acme-key", "client_secrets": [], **fields}])


def test_listed_ids_are_the_only_ones_allowed() -> None:
    (integration,) = parse_integrations(one(allowed_organizations=[ORG]), "test")
    assert not integration.any_organization
    assert integration.allows_organization(ORG.lower())
    assert not integration.allows_organization(OTHER)


@pytest.mark.parametrize("orgs", [["*"], None])
def test_star_or_unset_allows_any(orgs: list[str] | None) -> None:
    (integration,) = parse_integrations(one(allowed_organizations=orgs), "test")
    assert integration.any_organization
    assert integration.allows_organization(OTHER)


def test_star_cannot_be_mixed_with_ids() -> None:
    with pytest.raises(IntegrationConfigError, match="allowed_organizations"):
        parse_integrations(one(allowed_organizations=["*", ORG]), "test")


@pytest.mark.parametrize(("orgs", "warned"), [(None, True), (["*"], False), ([ORG], False)])
def test_an_unrestricted_integration_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture, orgs: list[str] | None, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.security.integrations"):
        IntegrationRegistry(parse_integrations(one(allowed_organizations=orgs), "test"))
    named = [r for r in caplog.records if getattr(r, "integration", None) == "acme"]
    assert bool(named) is warned
    if warned:
        assert "any organization" in named[0].getMessage()
