"""TLS contexts for ``tls: terminate``: gatekeeper is the TLS server toward FTP clients and,
with ``upstream: tls``, a TLS client toward the upstream (RFC 4217, explicit FTPS)."""

from __future__ import annotations

import ssl

from gatekeeper.errors import GatekeeperError
from gatekeeper.settings import ListenerSettings


def client_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    """The server-side context clients' AUTH TLS is answered with; None unless terminating."""
    tls = settings.tls
    if tls.mode != "terminate" or tls.certificate is None or tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise GatekeeperError(
            f"{settings.source}: listener {settings.name}: cannot load TLS certificate "
            f"{tls.certificate} with key {tls.key}: {exc}"
        ) from exc
    return context


def upstream_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    """The client-side context toward the upstream; None when it is spoken to in plain."""
    tls = settings.tls
    if tls.mode != "terminate" or tls.upstream != "tls":
        return None
    try:
        context = ssl.create_default_context(cafile=tls.upstream_ca)
    except (OSError, ssl.SSLError) as exc:
        raise GatekeeperError(
            f"{settings.source}: listener {settings.name}: cannot load CA bundle "
            f"{tls.upstream_ca}: {exc}"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
