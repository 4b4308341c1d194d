"""Connection security: source-address allowlist, integrations, signatures, replay protection."""

from app.security.authenticator import AuthDecision, Authenticator, NonceStoreUnavailable
from app.security.integrations import Integration, IntegrationConfigError, IntegrationRegistry
from app.security.ipallow import IpAllowlist
from app.security.signature import Outcome, SignatureVerifier, sign_request

__all__ = [
    "AuthDecision",
    "Authenticator",
    "Integration",
    "IntegrationConfigError",
    "IntegrationRegistry",
    "IpAllowlist",
    "NonceStoreUnavailable",
    "Outcome",
    "SignatureVerifier",
    "sign_request",
]
