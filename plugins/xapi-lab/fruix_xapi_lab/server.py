"""XAPI's wire protocol over HTTP(S): XML-RPC with ``Status`` / ``Value`` answers.

Every call answers ``{"Status": "Success", "Value": ...}`` or
``{"Status": "Failure", "ErrorDescription": [code, ...]}``, as XAPI does; the
first parameter of every call but the login is the session reference. One
endpoint per pool host; a member answers ``HOST_IS_SLAVE``. ``Async.<call>``
returns a task reference at once and runs the call server-side (xen-api
``server_helpers.ml``, ``sync_ty_and_maybe_remove_prefix``). Connections are
HTTP/1.1 keep-alive, like XAPI's; each request runs in a thread of its own, so
a blocked ``event.from`` or a long operation does not stall the others, and a
call keeps running when its client hangs up.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import structlog

from fruix_xapi_lab.state import LabHost, XapiError, XapiState

__all__ = ["Call", "XapiHttpServer", "method_table"]

log = structlog.get_logger(__name__)

Handler = Callable[..., Any]
ASYNC = "Async."


class Call:
    """One entry of the method table: the handler and its argument counts after the session."""

    __slots__ = ("handler", "least", "most", "operation")

    def __init__(self, handler: Handler, least: int, most: int, *, operation: bool = False):
        self.handler = handler
        self.least = least
        self.most = most
        #: takes a task first and may run as ``Async.*``
        self.operation = operation


def method_table(state: XapiState) -> dict[str, Call]:
    """The XAPI calls the lab answers, bound to ``state``."""

    def field(name: str) -> Handler:
        return lambda ref: state.get_field(ref, name)

    def task_field(name: str) -> Handler:
        return lambda ref: state.task_field(ref, name)

    def networks(ref: Any) -> dict[str, str]:
        return dict(state.metrics_record(ref)["networks"])

    table = {
        "VM.get_all": Call(state.get_all, 0, 0),
        "VM.get_all_records": Call(state.get_all_records, 0, 0),
        "VM.get_by_uuid": Call(state.get_by_uuid, 1, 1),
        "VM.get_by_name_label": Call(state.get_by_name_label, 1, 1),
        "VM.get_record": Call(state.get_record, 1, 1),
        "VM_guest_metrics.get_record": Call(state.metrics_record, 1, 1),
        "VIF.get_record": Call(state.vif_record, 1, 1),
        "VIF.get_MAC": Call(lambda ref: state.vif_record(ref)["MAC"], 1, 1),
        "VM_guest_metrics.get_networks": Call(networks, 1, 1),
        "VM.start": Call(state.start, 3, 3, operation=True),
        "VM.clean_shutdown": Call(state.clean_shutdown, 1, 1, operation=True),
        "VM.hard_shutdown": Call(state.hard_shutdown, 1, 1, operation=True),
        "VM.pause": Call(state.pause, 1, 1, operation=True),
        "VM.unpause": Call(state.unpause, 1, 1, operation=True),
        "VM.suspend": Call(state.suspend, 1, 1, operation=True),
        "VM.resume": Call(state.resume, 3, 3, operation=True),
        "VM.snapshot": Call(state.snapshot, 2, 2, operation=True),
        "VM.checkpoint": Call(state.checkpoint, 2, 2, operation=True),
        "VM.revert": Call(state.revert, 1, 1, operation=True),
        "task.get_record": Call(state.task_record, 1, 1),
        "task.get_all": Call(state.task_get_all, 0, 0),
        "task.cancel": Call(state.task_cancel, 1, 1),
        "task.destroy": Call(state.task_destroy, 1, 1),
        "event.from": Call(state.event_from, 3, 3),
        "pool.get_all": Call(state.pool_get_all, 0, 0),
        "pool.get_master": Call(state.pool_get_master, 1, 1),
        "host.get_all": Call(state.host_get_all, 0, 0),
        "host.get_record": Call(state.host_get_record, 1, 1),
        "host.get_address": Call(state.host_get_address, 1, 1),
        "host.get_server_certificate": Call(state.host_get_server_certificate, 1, 1),
    }
    for name in ("uuid", "name_label", "power_state", "guest_metrics", "snapshots",
                 "snapshot_of", "is_a_snapshot", "is_a_template", "allowed_operations", "VIFs",
                 "current_operations", "resident_on"):
        table[f"VM.get_{name}"] = Call(field(name), 1, 1)
    for name in ("status", "result", "error_info", "name_label", "progress", "uuid",
                 "allowed_operations"):
        table[f"task.get_{name}"] = Call(task_field(name), 1, 1)
    return table


class _RequestHandler(SimpleXMLRPCRequestHandler):
    rpc_paths = ()  # any path, like xapi
    protocol_version = "HTTP/1.1"  # keep-alive, like xapi

    server: XapiHttpServer

    def setup(self) -> None:
        # TLS handshakes happen here, in the request's thread, not in the accept loop.
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(30)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        self.server.track(self.request, True)
        self.server.local.handler = self

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("lab http", request=format % args)


class XapiHttpServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    """One host's XML-RPC endpoint; ``start`` serves in a thread, ``close`` stops it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: XapiState, host: str = "127.0.0.1", port: int = 0, *,
                 tls: ssl.SSLContext | None = None, lab_host: LabHost | None = None):
        self.state = state
        self.lab_host = lab_host or state.master
        self.methods = method_table(state)
        self.local = threading.local()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((host, port), requestHandler=_RequestHandler, logRequests=False,
                         allow_none=True)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)
        self.register_instance(self)
        self._thread: threading.Thread | None = None

    def track(self, sock: socket.socket, opened: bool) -> None:
        with self._open_lock:
            if opened:
                self._open.add(sock)
            else:
                self._open.discard(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-call (timeouts, resets) is not news.
        log.debug("lab connection error", client=client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="xapi-lab",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def drop_connections(self) -> None:
        """Close every open client connection (the host went away)."""
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- dispatch -------------------------------------------------------------------

    def _dispatch(self, method: str, params: Any) -> dict[str, Any]:
        state = self.state
        state.calls.append((self.lab_host.name, method))
        state.faults.fire(f"call:{method}")
        try:
            value = self._call(method, list(params))
        except XapiError as exc:
            answer: dict[str, Any] = {"Status": "Failure", "ErrorDescription": exc.description}
        except Exception as exc:  # a lab bug must still answer in XAPI's shape
            log.exception("lab internal error", method=method)
            answer = {"Status": "Failure", "ErrorDescription": ["INTERNAL_ERROR", str(exc)]}
        else:
            answer = {"Status": "Success", "Value": "" if value is None else value}
        state.faults.fire(f"answer:{method}")
        if state.faults.take_reset(method):
            # The call is done; the answer never arrives (the connection drops).
            handler = getattr(self.local, "handler", None)
            if handler is not None:
                try:
                    handler.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return answer

    def _call(self, method: str, params: list[Any]) -> Any:
        state = self.state
        host = self.lab_host
        if method == "session.login_with_password":
            if not 2 <= len(params) <= 4:
                raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, 4, len(params))
            return state.login_with_password(*params, host=host)
        if method == "session.logout":
            if len(params) != 1:
                raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, 1, len(params))
            return state.logout(state.check_session(params[0], host))
        asynchronous = method.startswith(ASYNC)
        name = method[len(ASYNC):] if asynchronous else method
        entry = self.methods.get(name)
        if entry is None or (asynchronous and not entry.operation):
            raise XapiError("MESSAGE_METHOD_UNKNOWN", method)
        if not params:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, entry.least + 1, 0)
        session = state.check_session(params[0], host)
        args = params[1:]
        if not entry.least <= len(args) <= entry.most:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, entry.most + 1,
                            len(params))
        if not entry.operation:
            return entry.handler(*args)
        task = state.new_task(f"{ASYNC}{name}" if asynchronous else name, session.ref,
                              visible=asynchronous)
        if asynchronous:
            state.spawn(task, lambda: entry.handler(task, *args))
            return task.ref
        try:
            value = entry.handler(task, *args)
        except XapiError as exc:
            state.finish_task(task, error=exc)
            raise
        state.finish_task(task, value)
        return value

