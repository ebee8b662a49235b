"""A XenAPI session with a socket timeout, TLS policy and clean errors.

The official SDK (``XenAPI.Session``) is an ``xmlrpc.client.ServerProxy``
without any socket timeout and with TLS either system-verified or off. This
module gives it a transport that applies ``timeout`` to every call, verifies
the pool master against a CA file or a pinned certificate fingerprint, and
turns every failure into a :class:`~fruix_core.errors.GuestError` whose
message never carries a credential.

The SDK is imported lazily so importing the plugin stays cheap.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import xmlrpc.client
from typing import Any
from urllib.parse import urlsplit

import structlog

from fruix_core.api import GuestError
from fruix_xcpng.settings import Credentials, XcpngSettings

__all__ = ["API_VERSION", "CertificatePinError", "XapiClient", "XapiFailure", "make_transport"]

log = structlog.get_logger(__name__)

#: The API version string sent at login (XAPI accepts any; 1.0 is customary).
API_VERSION = "1.0"


class CertificatePinError(ssl.SSLError):
    """The pool master's certificate does not have the pinned fingerprint."""


class XapiFailure(GuestError):
    """XAPI answered a call with an error code (``VM_BAD_POWER_STATE``, ...)."""

    def __init__(self, method: str, code: str, details: list[str], message: str):
        self.method = method
        self.code = code
        self.details = details
        super().__init__(message)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose peer certificate must hash to a pinned SHA-256."""

    def __init__(self, host: str, *, pin: str, **kwargs: Any):
        super().__init__(host, **kwargs)
        self._pin = pin

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""
        seen = hashlib.sha256(der).hexdigest()
        if seen != self._pin:
            self.close()
            raise CertificatePinError(f"certificate fingerprint is sha256:{seen}, "
                                      f"pinned sha256:{self._pin}")


class _TimeoutTransport(xmlrpc.client.Transport):
    """An XML-RPC transport whose every connection has a socket timeout."""

    def __init__(self, timeout: float, *, context: ssl.SSLContext | None = None,
                 pin: str = "") -> None:
        super().__init__()
        self.timeout = timeout
        self._context = context
        self._pin = pin

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection and host == self._connection[0]:
            kept = self._connection[1]
            if kept is not None:
                kept.timeout = self.timeout
                if kept.sock is not None:
                    kept.sock.settimeout(self.timeout)
                return kept
        chost, self._extra_headers, _x509 = self.get_host_info(host)
        conn: http.client.HTTPConnection
        if self._context is None:
            conn = http.client.HTTPConnection(chost, timeout=self.timeout)
        elif self._pin:
            conn = _PinnedHTTPSConnection(chost, pin=self._pin, timeout=self.timeout,
                                          context=self._context)
        else:
            conn = http.client.HTTPSConnection(chost, timeout=self.timeout,
                                               context=self._context)
        self._connection = host, conn
        return conn


def tls_context(settings: XcpngSettings) -> ssl.SSLContext | None:
    """The TLS policy of ``settings`` (``None`` for an http:// lab URL)."""
    if urlsplit(settings.url).scheme != "https":
        return None
    if settings.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if settings.ca_file:
        context = ssl.create_default_context(cafile=settings.ca_file)
    elif settings.pinned_cert_sha256:
        # The pin replaces the CA chain: XCP-ng hosts ship self-signed certificates.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
    return context


def make_transport(settings: XcpngSettings) -> _TimeoutTransport:
    """A transport applying ``settings.timeout`` and the TLS policy."""
    return _TimeoutTransport(settings.timeout, context=tls_context(settings),
                             pin=settings.pinned_cert_sha256)


class XapiClient:
    """One logged-in XenAPI session; use it as a context manager so it is logged out.

    Not thread-safe: each thread that talks to the pool uses its own client.
    """

    def __init__(self, settings: XcpngSettings, credentials: Credentials):
        self.settings = settings
        self.credentials = credentials
        self._transport = make_transport(settings)
        self._session: Any = None

    # -- session -----------------------------------------------------------------------

    def __enter__(self) -> XapiClient:
        self.login()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logout()

    def login(self) -> None:
        import XenAPI

        self._session = XenAPI.Session(self.settings.url, transport=self._transport)
        self._guard("session.login_with_password", lambda: self._session.xenapi.login_with_password(
            self.credentials.username.reveal(), self.credentials.password.reveal(),
            API_VERSION, self.settings.originator))
        log.debug("xapi login", url=self.settings.url, originator=self.settings.originator)

    def logout(self) -> None:
        """Log out; never raises (a dead session is already gone on the server)."""
        session, self._session = self._session, None
        if session is None or session.last_login_method is None:
            return
        self._transport.timeout = self.settings.timeout
        try:
            session.xenapi.session.logout()
            log.debug("xapi logout", url=self.settings.url)
        except Exception as exc:  # the pool may be gone; the session then dies with it
            log.warning("xapi logout failed", url=self.settings.url,
                        error=self.credentials.scrub(f"{type(exc).__name__}: {exc}"))
        finally:
            try:
                self._transport.close()
            except Exception:  # closing a broken socket
                pass

    # -- calls -----------------------------------------------------------------------------

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``method`` (``"VM.get_record"``) with the session prepended.

        :param timeout: socket timeout for this call (default ``settings.timeout``).
        :raises XapiFailure: XAPI returned an error code.
        :raises GuestError: the pool could not be reached, timed out, or TLS failed.
        """
        if self._session is None:
            raise GuestError("internal error: XenAPI call before login")
        target: Any = self._session.xenapi
        for part in method.split("."):
            target = getattr(target, part)
        self._transport.timeout = timeout if timeout is not None else self.settings.timeout
        try:
            return self._guard(method, lambda: target(*args))
        finally:
            self._transport.timeout = self.settings.timeout

    def _guard(self, method: str, thunk: Any) -> Any:
        # The error is raised outside the except blocks so that no exception keeps
        # the SDK's original (which may name the user) as its context.
        error = self._failure_of(method, thunk)
        if isinstance(error, GuestError):
            raise error
        return error.value

    def _failure_of(self, method: str, thunk: Any) -> _Answer | GuestError:
        import XenAPI

        url = self.settings.url
        scrub = self.credentials.scrub
        try:
            return _Answer(thunk())
        except XenAPI.Failure as exc:
            details = [scrub(str(d)) for d in (exc.details or [])]
            code = details[0] if details else "UNKNOWN"
            return XapiFailure(method, code, details,
                               _failure_message(method, code, details, self.settings))
        except CertificatePinError as exc:
            return GuestError(f"{url}: TLS certificate does not match pinned_cert_sha256 "
                              f"({exc.args[0]})")
        except ssl.SSLCertVerificationError as exc:
            return GuestError(f"{url}: TLS certificate not trusted ({exc.verify_message}); set "
                              "ca_file or pinned_cert_sha256 (insecure only for a lab)")
        except ssl.SSLError as exc:
            return GuestError(f"{url}: TLS handshake failed: {scrub(str(exc))}")
        except TimeoutError:
            return GuestError(f"{url}: XenAPI call {method} got no answer within "
                              f"{self._transport.timeout:g} s (timeout)")
        except ConnectionRefusedError:
            return GuestError(f"{url}: connection refused (is this the pool master?)")
        except OSError as exc:
            return GuestError(f"{url}: cannot reach the pool master: "
                              f"{scrub(exc.strerror or str(exc))}")
        except xmlrpc.client.ProtocolError as exc:
            return GuestError(f"{url}: HTTP error {exc.errcode} {scrub(exc.errmsg)} "
                              f"calling {method}")
        except xmlrpc.client.Fault as exc:
            return GuestError(f"{url}: XenAPI call {method} failed: "
                              f"{scrub(str(exc.faultString))}")
        except (http.client.HTTPException, xmlrpc.client.ResponseError) as exc:
            return GuestError(f"{url}: bad answer to {method}: {type(exc).__name__}")


class _Answer:
    """A successful call's value (distinct from an error to raise)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


_HINTS = {
    "SESSION_AUTHENTICATION_FAILED": "the pool refused the login; check the credentials",
    "HANDLE_INVALID": "the object no longer exists (deleted meanwhile?)",
    "UUID_INVALID": "no object has this uuid",
    "VM_BAD_POWER_STATE": "the VM is not in a power state that allows this",
    "SESSION_INVALID": "the session expired and could not be renewed",
    "MESSAGE_METHOD_UNKNOWN": "the pool does not know this call",
}


def _failure_message(method: str, code: str, details: list[str],
                     settings: XcpngSettings) -> str:
    if code == "SESSION_AUTHENTICATION_FAILED":
        # The details name the user: say where the login came from instead.
        source = (f"credentials_file {settings.credentials_file}" if settings.credentials_file
                  else f"${settings.username_env} / ${settings.password_env}")
        return (f"{settings.url}: login refused (SESSION_AUTHENTICATION_FAILED); "
                f"check the credentials in {source}")
    hint = _HINTS.get(code)
    shown = " ".join(details)
    return f"{settings.url}: {method} failed: {shown}" + (f" ({hint})" if hint else "")
