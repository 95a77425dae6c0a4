"""Connecting to an existing Dask scheduler (``--scheduler tcp://host:8786``).

The address is asked who it is before any :class:`distributed.Client` is made: a Client
whose handshake fails lives on until the process exits and then spends ~60 s closing
(seen against a server that answers but does not speak Dask's protocol: the right error
after 2 s, then a one-minute hang and an "Exception ignored" traceback). Asking first,
with distributed's own communication layer and Dask's ``identity`` request, leaves
nothing behind when the answer is wrong or missing.
"""

from __future__ import annotations

from qdmed.errors import InputError

#: Seconds to connect to a Dask scheduler and complete its handshake.
CONNECT_TIMEOUT_S = 30

#: Seconds to wait for a first worker on a scheduler that has none.
WORKERS_TIMEOUT_S = 60

_PORTS = "the scheduler's port is 8786 by default, its dashboard 8787"


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``tcp://`` address, else None (another transport: tls, ucx...)."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"scheduler (--scheduler) {address}: no port; give host and port, "
                         f"e.g. tcp://{rest or 'host'}:8786")
    return host.strip("[]") or "127.0.0.1", int(port)


def identify(address: str, timeout_s: float | None = None) -> dict:
    """What answers at a Dask address: its reply to Dask's ``identity`` request (a dict with
    ``type`` 'Scheduler' or 'Worker', ``id``, ``workers``...), or InputError naming what
    went wrong: nothing listening (said at once, not after the timeout), a host that does
    not resolve, a server that is not Dask, or no answer within ``timeout_s`` (default
    :data:`CONNECT_TIMEOUT_S`). Runs its own event loop in a daemon thread, abandoned
    after the timeout, so that no handshake can hang the caller."""
    import asyncio
    import socket
    import threading

    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    hp = _host_port(address)
    if hp is not None:  # a refused port answers at once; distributed retries until timeout
        try:
            socket.create_connection(hp, timeout=timeout_s).close()
        except socket.gaierror as exc:
            raise InputError(f"cannot connect to the Dask scheduler at {address}: host "
                             f"{hp[0]!r} not found ({exc.strerror})") from None
        except ConnectionRefusedError:
            raise InputError(f"cannot connect to the Dask scheduler at {address}: nothing "
                             f"listens there (is the scheduler running? {_PORTS})") from None
        except OSError as exc:  # unreachable network, firewall, connect timeout
            raise InputError(f"cannot connect to the Dask scheduler at {address}: "
                             f"{exc.strerror or type(exc).__name__}") from None

    async def ask():
        from distributed.comm import connect
        from distributed.security import Security

        # as a Client connects: TLS certificates from dask's configuration (distributed.comm.tls)
        comm = await connect(address, timeout=timeout_s,
                             **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    done: dict = {}

    def run():
        try:
            done["reply"] = asyncio.run(asyncio.wait_for(ask(), timeout_s))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            done["error"] = exc

    t = threading.Thread(target=run, name="qdmed-identify", daemon=True)
    t.start()
    t.join(timeout_s + 5)
    error = done.get("error")
    if t.is_alive() or isinstance(error, TimeoutError | asyncio.TimeoutError):
        raise InputError(f"no Dask scheduler answered at {address} within {timeout_s:g} s "
                         f"(something accepts connections there but does not speak Dask's "
                         f"protocol; {_PORTS})")
    if isinstance(error, OSError):
        raise InputError(f"cannot connect to the Dask scheduler at {address}: {error}")
    reply = done.get("reply")
    if error is not None or not isinstance(reply, dict) or "type" not in reply:
        why = f"{type(error).__name__}: {str(error)[:120]}" if error is not None else \
            f"it answered {str(reply)[:80]!r}"
        raise InputError(f"{address} is not a Dask scheduler (its handshake failed: {why}); "
                         f"{_PORTS}")
    return reply


def connect(address: str):
    """A :class:`distributed.Client` on the Dask scheduler at `address` (not dask's default
    client: qdmed submits its jobs to it by name), after :func:`identify` has found a
    scheduler there; InputError otherwise, e.g. for a worker's address."""
    import dask
    from distributed import Client

    reply = identify(address)
    if reply.get("type") != "Scheduler":
        raise InputError(f"{address} is a Dask {reply.get('type')}, not the scheduler: give "
                         f"the scheduler's address ({_PORTS})")
    before = dask.config.get("scheduler", None)
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - it answered as a scheduler a moment ago
        # a Client that fails after setting itself as dask's scheduler leaves the setting
        # behind: every later dask computation in this process would ask for it
        if before is None:
            dask.config.config.pop("scheduler", None)
        else:
            dask.config.set(scheduler=before)
        raise InputError(f"cannot connect to the Dask scheduler at {address}: "
                         f"{type(exc).__name__}: {exc}") from None
    if not reply.get("workers"):  # a run on a cluster without workers waited forever
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            client.close()
            raise InputError(f"the Dask scheduler at {address} has no workers (none joined "
                             f"within {WORKERS_TIMEOUT_S:g} s): start some with "
                             f"`dask worker {address}`") from None
    return client
