"""What the transport needs of the gateway, as narrow interfaces.

`app.runtime.Gateway` provides every one of them; the transport names only these, never the
`Gateway` itself (app.runtime sits above the transport: docs/architecture.md). Each part of
the transport is handed what it reaches for and nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.config import Settings
    from app.control.plane import ControlPlane
    from app.protocol.session import SessionConfig
    from app.publisher.publisher import Publisher
    from app.security.authenticator import Authenticator
    from app.security.integrations import Integration
    from app.security.ipallow import IpAllowlist
    from app.security.upgrade_claims import UpgradeClaims
    from app.transport.connection import Connection
    from app.transport.load_shedding import LoadShedder
    from app.transport.source_limiter import SourceRateLimiter


class ReadinessHost(Protocol):
    """The operational routes (http.py): the readiness checks."""

    def readiness(self) -> dict[str, bool]: ...


class GuardHost(Protocol):
    """The HTTP guard (http_guard.py): load shedding, the client address and its upgrade budget."""

    @property
    def load_shedder(self) -> LoadShedder: ...

    @property
    def allowlist(self) -> IpAllowlist: ...

    @property
    def upgrade_limiter(self) -> SourceRateLimiter: ...


class AdmissionHost(GuardHost, Protocol):
    """Admission (admission.py): the guard's services, authentication and the session limits."""

    @property
    def settings(self) -> Settings: ...

    @property
    def draining(self) -> bool: ...

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def upgrade_claims(self) -> UpgradeClaims: ...

    def ready_for_sessions(self) -> bool: ...

    def at_session_limit(self) -> bool: ...

    def admit_session(self, integration: Integration | None) -> str | None: ...

    def admit_auth_failure(self) -> bool: ...


class ReporterHost(Protocol):
    """A session's reporter (session_reporter.py): the publisher and the control plane."""

    @property
    def publisher(self) -> Publisher: ...

    @property
    def control(self) -> ControlPlane: ...


class ConnectionHost(ReporterHost, Protocol):
    """A live connection (connection.py): its session's configuration and the live set."""

    @property
    def settings(self) -> Settings: ...

    def session_config_for(self, integration: Integration | None) -> SessionConfig: ...

    def connection_started(self, connection: Connection) -> None: ...

    def connection_finished(self, connection: Connection) -> None: ...


class EndpointHost(AdmissionHost, ConnectionHost, Protocol):
    """The WebSocket endpoint: admission's and a connection's, and the release of the slot."""

    def release_session(self, integration: Integration | None) -> None: ...
