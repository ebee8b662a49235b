"""A XenAPI session that follows the pool master, never re-sends blindly, and runs tasks.

The official SDK (``XenAPI.Session``) is an ``xmlrpc.client.ServerProxy``
without any socket timeout, with TLS either system-verified or off, bound to
one host. This module gives it

- a transport that applies ``timeout`` to every call, verifies each host
  against the TLS policy (:mod:`fruix_xcpng.tlspolicy`), and never sends a
  call twice unless the call only reads (Python's ``xmlrpc.client`` silently
  re-sends any call once after a connection reset; a re-sent ``VM.start``
  answers ``VM_BAD_POWER_STATE``);
- *master following*: a pool member answers a login, or a call on a session,
  with ``HOST_IS_SLAVE [master address]`` (xen-api ``xapi_session.ml``,
  ``session_check.ml``); the client then logs in to that address, with the
  same TLS policy, and repeats the call (which the member never started);
- :meth:`XapiClient.run_task`: an ``Async.*`` call waited for under a deadline;
  on the deadline or an interrupt it calls ``task.cancel`` (the only way to
  stop server-side work: a blocking call keeps running when the client hangs
  up), and always ``task.destroy``.

Every failure becomes a :class:`~fruix_core.errors.GuestError` whose message
never carries a credential. The SDK is imported lazily.
"""

from __future__ import annotations

import http.client
import ssl
import time
import xmlrpc.client
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from fruix_core.api import Cancelled, CancelToken, GuestError
from fruix_xcpng.settings import Credentials, XcpngSettings
from fruix_xcpng.tlspolicy import CertificateNameError, CertificatePinError, TlsPolicy

__all__ = ["API_VERSION", "OutcomeUnknown", "XapiClient", "XapiFailure", "master_url"]

log = structlog.get_logger(__name__)

#: The API version string sent at login (XAPI accepts any; 1.0 is customary).
API_VERSION = "1.0"
#: How many ``HOST_IS_SLAVE`` redirections one call may follow.
MAX_HOPS = 3
#: Longest single wait for a task event: bounds how late an interrupt is noticed.
TASK_WAIT = 1.0
#: Calls safe to send twice (they only read).
_READ_ONLY = (".get_", "event.from", "task.get_")


class XapiFailure(GuestError):
    """XAPI answered a call with an error code (``VM_BAD_POWER_STATE``, ...)."""

    def __init__(self, method: str, code: str, details: list[str], message: str):
        self.method = method
        self.code = code
        self.details = details
        super().__init__(message)


class OutcomeUnknown(GuestError):
    """The connection broke after a call was sent: XAPI may or may not have done it."""

    def __init__(self, method: str, message: str):
        self.method = method
        super().__init__(message)


class _ConnectionLost(Exception):
    """Raised by the transport instead of silently re-sending a call."""


def master_url(url: str, address: str) -> str:
    """``url`` pointed at the master ``address`` (same scheme, port and path).

    :raises GuestError: ``address`` is not an IP address or a host name (the
        pool's answer is not trusted to build a URL from anything else).
    """
    import ipaddress
    import re

    address = address.strip()
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?",
                            address):
            raise GuestError(f"{url}: HOST_IS_SLAVE names a master address that is neither "
                             f"an IP address nor a host name: {address[:80]!r}") from None
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


class _VerifiedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose peer is checked against the TLS policy after the handshake."""

    def __init__(self, host: str, *, policy: TlsPolicy, **kwargs: Any):
        super().__init__(host, **kwargs)
        self._policy = policy

    def connect(self) -> None:
        super().connect()
        try:
            self._policy.check(self.sock, self.host)
        except ssl.SSLError:
            self.close()
            raise


class _Transport(xmlrpc.client.Transport):
    """XML-RPC with a socket timeout, a TLS policy, and no blind re-send."""

    def __init__(self, timeout: float, policy: TlsPolicy | None) -> None:
        super().__init__()
        self.timeout = timeout
        self.policy = policy
        #: whether the call in flight may be sent again after a connection reset
        self.resend_ok = True

    def request(self, host: Any, handler: Any, request_body: Any, verbose: bool = False) -> Any:
        if self.resend_ok:
            return super().request(host, handler, request_body, verbose)
        # A call that changes something goes out on a fresh connection, once: a
        # reset then means "sent, outcome unknown", never "sent twice".
        self.close()
        try:
            return self.single_request(host, handler, request_body, verbose)
        except (http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError,
                BrokenPipeError) as exc:
            self.close()
            raise _ConnectionLost(type(exc).__name__) from None

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
        if self.policy is None:
            conn = http.client.HTTPConnection(chost, timeout=self.timeout)
        else:
            conn = _VerifiedHTTPSConnection(chost, policy=self.policy, timeout=self.timeout,
                                            context=self.policy.context)
        self._connection = host, conn
        return conn


class XapiClient:
    """One logged-in XenAPI session on the pool master; a context manager that logs out.

    Not thread-safe: each thread that talks to the pool uses its own client.

    :param url: where to start (default ``settings.url``); a lease passes the
        master it last talked to.
    :param learned_pins: host address → certificate SHA-256 learned from the
        pool over a verified connection (see :meth:`learn_pool_certificates`).
    """

    def __init__(self, settings: XcpngSettings, credentials: Credentials, *, url: str = "",
                 learned_pins: Mapping[str, str] | None = None):
        self.settings = settings
        self.credentials = credentials
        self.url = url or settings.url
        self.learned_pins = dict(learned_pins or {})
        self._transport = self._make_transport(self.url)
        self._session: Any = None

    # -- session -----------------------------------------------------------------------

    def __enter__(self) -> XapiClient:
        self.login()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logout()

    def _make_transport(self, url: str) -> _Transport:
        host = urlsplit(url).hostname or ""
        policy = TlsPolicy.for_host(self.settings, host, self.learned_pins.get(host, ""))
        return _Transport(self.settings.timeout, policy)

    def _connect(self) -> None:
        import XenAPI

        self._session = XenAPI.Session(self.url, transport=self._transport)

    def login(self) -> None:
        """Log in, following ``HOST_IS_SLAVE`` to the master."""
        for _hop in range(MAX_HOPS + 1):
            self._connect()
            try:
                self._guard("session.login_with_password", False,
                            lambda: self._session.xenapi.login_with_password(
                                self.credentials.username.reveal(),
                                self.credentials.password.reveal(),
                                API_VERSION, self.settings.originator))
            except XapiFailure as exc:
                if exc.code != "HOST_IS_SLAVE" or len(exc.details) < 2:
                    raise
                self._follow(exc.details[1], "login")
                continue
            log.debug("xapi login", url=self.url, originator=self.settings.originator)
            return
        raise GuestError(f"{self.settings.url}: no pool master after {MAX_HOPS} redirections "
                         "(HOST_IS_SLAVE); is the pool changing masters?")

    def _follow(self, address: str, why: str) -> None:
        new = master_url(self.url, address)
        log.warning("following the pool master", was=self.url, master=new, during=why)
        try:
            self._transport.close()
        except Exception:  # a broken socket
            pass
        self.url = new
        self._transport = self._make_transport(new)
        self._session = None

    def logout(self) -> None:
        """Log out; never raises (a dead session is already gone on the server)."""
        session, self._session = self._session, None
        if session is None or session.last_login_method is None:
            return
        self._transport.timeout = self.settings.timeout
        self._transport.resend_ok = True
        ref = session._session
        try:
            session.xenapi.session.logout()
            log.debug("xapi logout", url=self.url)
        except Exception as exc:  # the pool may be gone; the session then dies with it
            details = list(getattr(exc, "details", None) or [])
            if details[:1] == ["HOST_IS_SLAVE"] and len(details) > 1 and ref:
                self._logout_at(master_url(self.url, str(details[1])), ref)
            else:
                log.warning("xapi logout failed", url=self.url,
                            error=self.credentials.scrub(f"{type(exc).__name__}: {exc}"))
        finally:
            try:
                self._transport.close()
            except Exception:  # closing a broken socket
                pass

    def _logout_at(self, url: str, ref: str) -> None:
        """Log session ``ref`` out at the master ``url`` (the master changed meanwhile)."""
        transport = self._make_transport(url)
        try:
            proxy = xmlrpc.client.ServerProxy(url, transport=transport, allow_none=True)
            proxy.session.logout(ref)
            log.debug("xapi logout at the new master", url=url)
        except Exception as exc:  # best effort: the session expires on its own
            log.warning("xapi logout failed", url=url, error=type(exc).__name__)
        finally:
            transport.close()

    def _relogin_at_master(self, address: str, method: str) -> None:
        """Our session's host became a member: continue on the master.

        Sessions live in the pool database, so the old one is logged out there.
        """
        old = self._session
        old_ref = old._session if old is not None else None
        self._follow(address, method)
        self.login()
        if old_ref:
            try:
                logout = self._session.__getattr__("session.logout")
                logout(old_ref)
            except Exception as exc:  # best effort: it expires on its own
                log.debug("old session not logged out", error=type(exc).__name__)

    # -- calls -----------------------------------------------------------------------------

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``method`` (``"VM.get_record"``) with the session prepended.

        Follows ``HOST_IS_SLAVE`` to the master (the member did nothing).

        :param timeout: socket timeout for this call (default ``settings.timeout``).
        :raises XapiFailure: XAPI returned an error code.
        :raises OutcomeUnknown: the connection broke after a changing call was sent.
        :raises GuestError: the pool could not be reached, timed out, or TLS failed.
        """
        if self._session is None:
            raise GuestError("internal error: XenAPI call before login")
        resend_ok = any(marker in method for marker in _READ_ONLY) \
            and not method.startswith("Async.")
        for _hop in range(MAX_HOPS + 1):
            target: Any = self._session.xenapi
            for part in method.split("."):
                target = getattr(target, part)
            self._transport.timeout = timeout if timeout is not None else self.settings.timeout
            try:
                return self._guard(method, resend_ok, _bound(target, args))
            except XapiFailure as exc:
                if exc.code != "HOST_IS_SLAVE" or len(exc.details) < 2:
                    raise
                self._relogin_at_master(exc.details[1], method)
            finally:
                self._transport.timeout = self.settings.timeout
        raise GuestError(f"{self.settings.url}: no pool master after {MAX_HOPS} redirections")

    def learn_pool_certificates(self) -> dict[str, str]:
        """Address → SHA-256 of every pool host's certificate, asked over this verified session.

        Lets a later session verify a new master after a master change
        (``host.get_server_certificate``); empty over plain HTTP or when the
        pool does not offer the call.
        """
        import hashlib

        if urlsplit(self.url).scheme != "https" or self.settings.insecure:
            return {}
        learned: dict[str, str] = {}
        try:
            for host in self.call("host.get_all"):
                address = self.call("host.get_address", host)
                pem = self.call("host.get_server_certificate", host)
                if address and pem:
                    der = ssl.PEM_cert_to_DER_cert(pem)
                    learned[str(address)] = hashlib.sha256(der).hexdigest()
        except (GuestError, ValueError) as exc:
            log.info("pool certificates not learned", error=str(exc))
            return {}
        self.learned_pins.update(learned)
        return learned

    # -- tasks -----------------------------------------------------------------------------

    def run_task(self, method: str, *args: Any, deadline: float, label: str,
                 cancel: CancelToken | None = None, task: str = "") -> Any:
        """Run ``Async.<method>`` and wait for its task; cancel it on deadline or interrupt.

        :param deadline: seconds the operation may take on the server.
        :param task: an already running task to wait for instead of calling.
        :returns: the task's result ("" for calls without one).
        :raises XapiFailure: the task failed (its ``error_info``).
        :raises Cancelled: interrupted; the task was cancelled.
        :raises GuestError: the deadline passed; the task was cancelled.
        """
        if not task:
            task = self.call(f"Async.{method}", *args)
        try:
            return self._wait_task(task, method, time.monotonic() + deadline, deadline, label,
                                   cancel)
        finally:
            try:
                self.call("task.destroy", task)
            except GuestError as exc:
                log.debug("task not destroyed", task=task, error=str(exc))

    def _wait_task(self, task: str, method: str, until: float, deadline: float, label: str,
                   cancel: CancelToken | None) -> Any:
        token = ""
        events = True
        while True:
            record = self.call("task.get_record", task)
            status = record.get("status", "")
            if status == "success":
                return _task_result(str(record.get("result", "")))
            if status in ("failure", "cancelled"):
                details = [self.credentials.scrub(str(d)) for d in record.get("error_info", [])]
                code = details[0] if details else "UNKNOWN"
                raise XapiFailure(method, code, details,
                                  _failure_message(method, code, details, self.url))
            interrupted = cancel is not None and cancel.cancelled
            if interrupted or time.monotonic() >= until:
                self._cancel_task(task, method, label)
                if interrupted:
                    raise Cancelled(f"interrupted during {method} of {label}; the task was "
                                    "cancelled on the pool")
                raise GuestError(f"{label}: {method} did not finish within {deadline:g} s; "
                                 "the task was cancelled on the pool")
            wait = max(0.05, min(TASK_WAIT, until - time.monotonic()))
            if events:
                try:
                    answer = self.call("event.from", [f"task/{task}"], token, wait,
                                       timeout=wait + self.settings.timeout)
                    token = str(answer.get("token", token)) if isinstance(answer, dict) \
                        else token
                    continue
                except XapiFailure as exc:
                    log.debug("event.from unavailable for tasks, polling", code=exc.code)
                    events = False
            pause = min(self.settings.poll_interval, wait)
            if cancel is not None:
                cancel.wait(pause)
            else:
                time.sleep(pause)

    def _cancel_task(self, task: str, method: str, label: str) -> None:
        """``task.cancel``, then wait (bounded) until the task left ``pending``."""
        log.warning("cancelling the task on the pool", vm=label, method=method)
        try:
            self.call("task.cancel", task)
        except XapiFailure as exc:  # finished meanwhile: nothing to cancel
            log.info("task not cancelled", vm=label, code=exc.code)
        until = time.monotonic() + self.settings.timeout
        while time.monotonic() < until:
            if self.call("task.get_status", task) != "pending":
                return
            time.sleep(min(self.settings.poll_interval, 0.2))
        log.warning("the pool has not finished cancelling", vm=label, method=method)

    # -- error mapping ----------------------------------------------------------------------

    def _guard(self, method: str, resend_ok: bool, thunk: Callable[[], Any]) -> Any:
        # The error is raised outside the except blocks so that no exception keeps
        # the SDK's original (which may name the user) as its context.
        self._transport.resend_ok = resend_ok
        try:
            error = self._failure_of(method, thunk)
        finally:
            self._transport.resend_ok = True
        if isinstance(error, GuestError):
            raise error
        return error.value

    def _failure_of(self, method: str, thunk: Callable[[], Any]) -> _Answer | GuestError:
        import XenAPI

        url = self.url
        scrub = self.credentials.scrub
        try:
            return _Answer(thunk())
        except XenAPI.Failure as exc:
            details = [scrub(str(d)) for d in (exc.details or [])]
            code = details[0] if details else "UNKNOWN"
            if code == "SESSION_AUTHENTICATION_FAILED":
                return XapiFailure(method, code, details, _login_refused(self.settings, url))
            return XapiFailure(method, code, details, _failure_message(method, code, details, url))
        except _ConnectionLost as exc:
            return OutcomeUnknown(method, f"{url}: the connection broke after {method} was sent "
                                  f"({exc.args[0]}); the pool may or may not have done it")
        except CertificatePinError as exc:
            return GuestError(f"{url}: TLS certificate does not match pinned_cert_sha256 "
                              f"({exc.args[0]})")
        except CertificateNameError as exc:
            return GuestError(f"{url}: {exc.args[0]}")
        except ssl.SSLCertVerificationError as exc:
            return GuestError(f"{url}: TLS certificate not trusted ({exc.verify_message}); set "
                              "ca_file or pinned_cert_sha256 (insecure only for a lab)")
        except ssl.SSLError as exc:
            return GuestError(f"{url}: TLS handshake failed: {scrub(str(exc))}")
        except TimeoutError:
            return GuestError(f"{url}: XenAPI call {method} got no answer within "
                              f"{self._transport.timeout:g} s (timeout)")
        except ConnectionRefusedError:
            return GuestError(f"{url}: connection refused (is this a pool host?)")
        except OSError as exc:
            return GuestError(f"{url}: cannot reach the pool: {scrub(exc.strerror or str(exc))}")
        except xmlrpc.client.ProtocolError as exc:
            return GuestError(f"{url}: HTTP error {exc.errcode} {scrub(exc.errmsg)} "
                              f"calling {method}")
        except xmlrpc.client.Fault as exc:
            return GuestError(f"{url}: XenAPI call {method} failed: "
                              f"{scrub(str(exc.faultString))}")
        except (http.client.HTTPException, xmlrpc.client.ResponseError) as exc:
            return GuestError(f"{url}: bad answer to {method}: {type(exc).__name__}")


def _bound(target: Any, args: tuple[Any, ...]) -> Callable[[], Any]:
    return lambda: target(*args)


class _Answer:
    """A successful call's value (distinct from an error to raise)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def _task_result(text: str) -> Any:
    """A task's ``result``: ``""`` or one XML-RPC ``<value>``."""
    if not text.strip():
        return ""
    try:
        (value,), _method = xmlrpc.client.loads(
            f"<methodResponse><params><param>{text}</param></params></methodResponse>")
    except Exception:  # an unexpected shape: hand the text back as it is
        return text
    return value


_HINTS = {
    "HANDLE_INVALID": "the object no longer exists (deleted meanwhile?)",
    "UUID_INVALID": "no object has this uuid",
    "VM_BAD_POWER_STATE": "the VM is not in a power state that allows this",
    "SESSION_INVALID": "the session expired and could not be renewed",
    "MESSAGE_METHOD_UNKNOWN": "the pool does not know this call",
    "OTHER_OPERATION_IN_PROGRESS": "another operation holds the VM",
    "TASK_CANCELLED": "the operation was cancelled",
    "VM_LACKS_FEATURE": "the guest has no agent or PV drivers for this",
    "RBAC_PERMISSION_DENIED": "the pool user's role does not allow this "
                              "(a role with VM.revert, such as vm-power-admin, is needed)",
}


def _login_refused(settings: XcpngSettings, url: str) -> str:
    # The details name the user: say where the login came from instead.
    source = (f"credentials_file {settings.credentials_file}" if settings.credentials_file
              else f"${settings.username_env} / ${settings.password_env}")
    return (f"{url}: login refused (SESSION_AUTHENTICATION_FAILED); "
            f"check the credentials in {source}")


def _failure_message(method: str, code: str, details: list[str], url: str) -> str:
    hint = _HINTS.get(code)
    shown = " ".join(details)
    return f"{url}: {method} failed: {shown}" + (f" ({hint})" if hint else "")
