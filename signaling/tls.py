"""The node's TLS: a server context from a certificate and key, re-read in place on demand."""

from __future__ import annotations

import ssl
from pathlib import Path

# Browsers that can run the web client all speak TLS 1.2; older versions are refused.
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def _load(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise ValueError(f"TLS: no such file: {e.filename}") from None
    except PermissionError as e:
        raise ValueError(f"TLS: cannot read {e.filename}") from None
    except ssl.SSLError as e:
        raise ValueError(f"TLS: {cert} and {key} are not a certificate and its key: {e}") from None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A context serving `cert` (a PEM chain) with `key`; ValueError says what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.set_alpn_protocols(["http/1.1"])
    _load(context, cert, key)
    return context


def reload(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Serve the files' current certificate from now on; on a bad file keep the old one.

    New connections get the new certificate; those open keep theirs.
    """
    # A pair that fails in a context of its own leaves the live one untouched: loading into it
    # directly could take the new certificate and then refuse the key that goes with it.
    server_context(cert, key)
    _load(context, cert, key)
