"""TLS for the client: a verifying endpoint, and failures put in words.

The endpoint checks the server's certificate chain (against ``--ca FILE`` or
the platform's trust store) and that it names the host we asked for
(``optionsForClientTLS``). Twisted's own ``ssl:`` client string checks neither
unless given ``hostname=``, so ``ssl:HOST:PORT`` is built here instead.
"""

import re
from typing import Optional, Tuple

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_trust_root(path: str):
    """Every certificate in the PEM file ``path`` as a trust root; ValueError if none."""
    try:
        with open(path, "rb") as f:
            blocks = _PEM.findall(f.read())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not blocks:
        raise ValueError(f"{path} holds no PEM certificate")
    try:
        return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])
    except Exception as e:  # pyOpenSSL's parse errors have many types
        raise ValueError(f"{path}: not a valid certificate ({e})") from None


def parse_ssl(description: str) -> Tuple[str, int]:
    """(host, port) of ``ssl:HOST:PORT`` or ``ssl:host=HOST:port=PORT``; ValueError if not."""
    kind, _, rest = description.partition(":")
    if kind.lower() != "ssl" or not rest:
        raise ValueError("expected ssl:HOST:PORT")
    positional, named = [], {}
    for part in rest.split(":"):
        key, eq, value = part.partition("=")
        if eq:
            named[key] = value
        else:
            positional.append(part)
    host = named.pop("host", positional.pop(0) if positional else None)
    port = named.pop("port", positional.pop(0) if positional else None)
    if named or positional or not host or port is None:
        raise ValueError("expected ssl:HOST:PORT (use tls:... for Twisted's other options)")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad port {port!r}") from None
    if not 0 < number < 65536:
        raise ValueError("the port must be 1-65535")
    return host, number


def tls_endpoint(reactor, host: str, port: int, ca: Optional[str] = None, timeout: int = 30):
    """A client endpoint speaking TLS to host:port, verifying certificate and host name."""
    trust = load_trust_root(ca) if ca else None  # None: the platform's trust store
    options = optionsForClientTLS(host, trustRoot=trust)
    return wrapClientTLS(options, HostnameEndpoint(reactor, host.encode("idna"), port, timeout))


def describe_failure(reason) -> Optional[str]:
    """A readable sentence for a TLS failure (a Failure or exception), else None."""
    error = getattr(reason, "value", reason)
    module = type(error).__module__ or ""
    if module.startswith("service_identity"):
        return ("TLS: the server's certificate is not for this host name "
                "(connect by the name the certificate was made for)")
    if module.startswith("OpenSSL"):
        text = str(error)
        if "certificate verify failed" in text:
            return ("TLS: the server's certificate is not trusted "
                    "(give its certificate or its CA with --ca FILE)")
        if "wrong version number" in text or "packet length too long" in text:
            return "TLS: the server does not speak TLS on this port"
        return f"TLS error: {text}"
    return None
