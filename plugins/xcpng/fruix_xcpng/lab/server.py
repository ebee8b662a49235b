"""XAPI's wire protocol over HTTP(S): XML-RPC with ``Status`` / ``Value`` answers.

Every call answers ``{"Status": "Success", "Value": ...}`` or
``{"Status": "Failure", "ErrorDescription": [code, ...]}``, as XAPI does; the
first parameter of every call but the login is the session reference. Requests
may go to any path (the SDK posts to ``/``). Each request runs in a thread of
its own, so a blocked ``event.from`` or a hanging shutdown does not stall the
others.
"""

from __future__ import annotations

import socketserver
import ssl
import threading
from collections.abc import Callable
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import structlog

from fruix_xcpng.lab.state import XapiError, XapiState

__all__ = ["XapiHttpServer", "method_table"]

log = structlog.get_logger(__name__)

# name -> (handler taking the state's arguments, least and most argument counts after
# the session). The login takes no session.
Handler = Callable[..., Any]


def method_table(state: XapiState) -> dict[str, tuple[Handler, int, int]]:
    """The XAPI calls the lab answers, bound to ``state``."""

    def field(name: str) -> Handler:
        return lambda ref: state.get_field(ref, name)

    def networks(ref: Any) -> dict[str, str]:
        found: dict[str, str] = state.metrics_record(ref)["networks"]
        return found

    return {
        "VM.get_all": (state.get_all, 0, 0),
        "VM.get_all_records": (state.get_all_records, 0, 0),
        "VM.get_by_uuid": (state.get_by_uuid, 1, 1),
        "VM.get_by_name_label": (state.get_by_name_label, 1, 1),
        "VM.get_record": (state.get_record, 1, 1),
        "VM.get_uuid": (field("uuid"), 1, 1),
        "VM.get_name_label": (field("name_label"), 1, 1),
        "VM.get_power_state": (field("power_state"), 1, 1),
        "VM.get_guest_metrics": (field("guest_metrics"), 1, 1),
        "VM.get_snapshots": (field("snapshots"), 1, 1),
        "VM.get_snapshot_of": (field("snapshot_of"), 1, 1),
        "VM.get_is_a_snapshot": (field("is_a_snapshot"), 1, 1),
        "VM.start": (state.start, 3, 3),
        "VM.clean_shutdown": (state.clean_shutdown, 1, 1),
        "VM.hard_shutdown": (state.hard_shutdown, 1, 1),
        "VM.pause": (state.pause, 1, 1),
        "VM.unpause": (state.unpause, 1, 1),
        "VM.suspend": (state.suspend, 1, 1),
        "VM.resume": (state.resume, 3, 3),
        "VM.snapshot": (state.snapshot, 2, 2),
        "VM.revert": (state.revert, 1, 1),
        "VM_guest_metrics.get_record": (state.metrics_record, 1, 1),
        "VM_guest_metrics.get_networks": (networks, 1, 1),
        "event.from": (state.event_from, 3, 3),
    }


class _RequestHandler(SimpleXMLRPCRequestHandler):
    rpc_paths = ()  # any path, like xapi

    def setup(self) -> None:
        # TLS handshakes happen here, in the request's thread, not in the accept loop.
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(30)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("lab http", request=format % args)


class XapiHttpServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    """The lab's XML-RPC endpoint; ``serve_forever`` in a thread, ``close`` to stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: XapiState, host: str = "127.0.0.1", port: int = 0, *,
                 tls: ssl.SSLContext | None = None):
        self.state = state
        self.methods = method_table(state)
        super().__init__((host, port), requestHandler=_RequestHandler, logRequests=False,
                         allow_none=True)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)
        self.register_instance(self)
        self._thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-call (our own timeouts do that) is not news.
        log.debug("lab connection error", client=client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="xapi-lab",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- dispatch -------------------------------------------------------------------

    def _dispatch(self, method: str, params: Any) -> dict[str, Any]:
        try:
            value = self._call(method, list(params))
        except XapiError as exc:
            return {"Status": "Failure", "ErrorDescription": exc.description}
        except Exception as exc:  # a lab bug must still answer in XAPI's shape
            log.exception("lab internal error", method=method)
            return {"Status": "Failure", "ErrorDescription": ["INTERNAL_ERROR", str(exc)]}
        return {"Status": "Success", "Value": "" if value is None else value}

    def _call(self, method: str, params: list[Any]) -> Any:
        state = self.state
        state.calls.append(method)
        if method == "session.login_with_password":
            if not 2 <= len(params) <= 4:
                raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, 4, len(params))
            return state.login_with_password(*params)
        if method == "session.logout":
            if len(params) != 1:
                raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, 1, len(params))
            return state.logout(state.check_session(params[0]))
        entry = self.methods.get(method)
        if entry is None:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", method)
        handler, least, most = entry
        if not params:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, least + 1, 0)
        state.check_session(params[0])
        args = params[1:]
        if not least <= len(args) <= most:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, most + 1, len(params))
        return handler(*args)
