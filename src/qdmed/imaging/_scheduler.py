"""Connecting to an existing Dask scheduler (``--scheduler tcp://host:8786``), and running
jobs on its workers.

The address is asked who it is before any :class:`distributed.Client` is made: a Client
whose handshake fails lives on until the process exits and then spends ~60 s closing
(seen against a server that answers but does not speak Dask's protocol: the right error
after 2 s, then a one-minute hang and an "Exception ignored" traceback). Asking first,
with distributed's own communication layer and Dask's ``identity`` request, leaves
nothing behind when the answer is wrong or missing.
"""

from __future__ import annotations

import warnings

from qdmed.errors import NUMPY_FP_NOTICE, InputError, QdmedWarning

#: Seconds for a TCP connection to the scheduler's host and port.
CONNECT_TIMEOUT_S = 30
#: Seconds for Dask's handshake and identity reply once connected (a scheduler answers in
#: milliseconds; a server of another protocol, e.g. HTTP, never does).
HANDSHAKE_TIMEOUT_S = 10
#: Seconds after which a run on a scheduler that no worker has joined says so (it goes on
#: waiting: an adaptive cluster starts its workers once jobs are submitted).
WORKERS_WAIT_S = 60

_PORTS = "the scheduler's port is 8786 by default, its dashboard 8787"
_TCP_SCHEMES = ("tcp", "tls", "ws", "wss")  # host:port over TCP


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an address carried over TCP (tcp, tls, ws, wss), else None (ucx,
    inproc...); InputError for one without host or port."""
    scheme, _, rest = address.partition("://")
    if scheme not in _TCP_SCHEMES:
        return None
    rest = rest.split("/", 1)[0]  # a trailing path or slash
    if rest.startswith("["):  # IPv6 in brackets: [::1]:8786
        host, _, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else ""
    elif rest.count(":") > 1:
        raise InputError(f"scheduler (--scheduler) {address}: an IPv6 address goes in "
                         f"brackets, e.g. {scheme}://[::1]:8786")
    else:
        host, _, port = rest.rpartition(":")
    if not port.isdigit() or not host:
        raise InputError(f"scheduler (--scheduler) {address}: give a host and a port, e.g. "
                         f"{scheme}://{host or 'host'}:8786")
    return host, int(port)


def _tcp_check(address: str, hp: tuple[str, int]) -> None:
    """InputError at once where nothing can listen: distributed retries a refused port
    until its timeout, and names neither cause."""
    import socket

    try:
        socket.create_connection(hp, timeout=CONNECT_TIMEOUT_S).close()
    except socket.gaierror as exc:
        raise InputError(f"cannot connect to the Dask scheduler at {address}: host "
                         f"{hp[0]!r} not found ({exc.strerror})") from None
    except ConnectionRefusedError:
        raise InputError(f"cannot connect to the Dask scheduler at {address}: nothing "
                         f"listens there (is the scheduler running? {_PORTS})") from None
    except TimeoutError:
        raise InputError(f"cannot connect to the Dask scheduler at {address}: no answer "
                         f"from {hp[0]} within {CONNECT_TIMEOUT_S:g} s (a host that cannot "
                         "be reached, or a firewall dropping the connection)") from None
    except OSError as exc:  # network unreachable, permission...
        raise InputError(f"cannot connect to the Dask scheduler at {address}: "
                         f"{exc.strerror or type(exc).__name__}") from None


def _reason(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


def _unreadable(error: BaseException | None) -> str | None:
    """The name of `error`'s kind when it is what reading bytes that are not Dask's frames
    raises (in distributed's handshake or the reply): a frame length read from text asks
    for exbibytes (MemoryError; numpy's own subclass), too few bytes for a header
    (struct.error), or msgpack cannot decode; else None."""
    import struct

    # said as what they mean to a user, not by the exception's name (a review: "MemoryError"
    # in a message about a network address)
    kinds: list[tuple[type, str]] = [
        (MemoryError, "read as a Dask frame, its first bytes gave an impossible length"),
        (struct.error, "its bytes are not Dask's framing"),
        (UnicodeDecodeError, "it sent text that is not Dask's")]
    try:
        from msgpack import exceptions as mp

        kinds += [(k, "its message is not Dask's msgpack") for k in (
            mp.UnpackException, mp.ExtraData, mp.FormatError, mp.StackError)]
    except ImportError:  # pragma: no cover - distributed depends on msgpack
        pass
    return next((name for kind, name in kinds if isinstance(error, kind)), None)


def identify(address: str, timeout_s: float | None = None) -> dict:
    """What answers at a Dask address: its reply to Dask's ``identity`` request (a dict with
    ``type`` 'Scheduler' or 'Worker', ``id``, ``workers``...), or InputError naming what
    went wrong: nothing listening, a host that does not resolve or cannot be reached (said
    without waiting for distributed's retries), a server that is not Dask, TLS settings
    missing, or no answer within ``timeout_s`` (default :data:`HANDSHAKE_TIMEOUT_S`) once
    connected. Runs its own event loop in a daemon thread, abandoned after the timeout, so
    that no handshake can hang the caller."""
    import asyncio
    import threading

    timeout_s = HANDSHAKE_TIMEOUT_S if timeout_s is None else timeout_s
    hp = _host_port(address)
    if hp is not None:
        _tcp_check(address, hp)

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
        try:  # the outer limit after distributed's own, so that its error comes through
            done["reply"] = asyncio.run(asyncio.wait_for(ask(), timeout_s + 2))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            done["error"] = exc

    t = threading.Thread(target=run, name="qdmed-identify", daemon=True)
    t.start()
    t.join(timeout_s + 5)
    error = done.get("error")
    if t.is_alive() or isinstance(error, TimeoutError | asyncio.TimeoutError) or (
            isinstance(error, OSError) and "Timed out" in str(error)):
        where = "something accepts connections there but" if hp else "it"
        raise InputError(f"no Dask scheduler answered at {address} within {timeout_s:g} s "
                         f"({where} did not answer Dask's handshake; {_PORTS})")
    if isinstance(error, TypeError) and "ssl_context" in str(error):
        raise InputError(f"{address}: a tls:// address needs TLS certificates in dask's "
                         "configuration (distributed.comm.tls.ca-file, .client.cert and "
                         ".client.key)")
    if isinstance(error, OSError):
        hint = " (does the scheduler use TLS? its address then starts tls://)" \
            if address.startswith("tls://") else ""
        raise InputError(f"cannot connect to the Dask scheduler at {address}: "
                         f"{_reason(error)}{hint}")
    reply = done.get("reply")
    if error is not None or not isinstance(reply, dict) or "type" not in reply:
        unreadable = _unreadable(error)
        if unreadable:  # an HTTP reply read as a frame length asked numpy for 3 EiB
            why = f"what it sent is not a Dask message ({unreadable})"
        else:
            why = _reason(error) if error is not None else f"it answered {str(reply)[:80]!r}"
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
    if "Scheduler" not in str(reply.get("type")):  # a Worker, a Nanny...
        theirs = reply.get("scheduler")
        raise InputError(f"{address} is a Dask {reply.get('type')}, not the scheduler: give "
                         + (f"its scheduler's address, {theirs}" if theirs else
                            f"the scheduler's address ({_PORTS})"))
    before = dask.config.get("scheduler", None)
    try:
        return Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - it answered as a scheduler a moment ago
        # a Client that fails after setting itself as dask's scheduler leaves the setting
        # behind: every later dask computation in this process would ask for it
        if before is None:
            dask.config.config.pop("scheduler", None)
        else:
            dask.config.set(scheduler=before)
        raise InputError(f"cannot connect to the Dask scheduler at {address}: "
                         f"{_reason(exc)}") from None


def watch_for_workers(client, wait_s: float | None = None):
    """A started timer that warns (QdmedWarning) when, ``wait_s`` seconds on (default
    :data:`WORKERS_WAIT_S`), no worker has joined `client`'s scheduler: the run waits for
    one, which a cluster without workers never gives. Cancel it when the jobs are done."""
    import threading

    wait_s = WORKERS_WAIT_S if wait_s is None else wait_s

    def check():
        try:
            workers = client.scheduler_info().get("workers")
            address = client.scheduler.address
        except Exception:  # noqa: BLE001 - a client closing meanwhile: nothing to say
            return
        if not workers:
            warnings.warn(f"no Dask worker has joined the scheduler at {address} in "
                          f"{wait_s:g} s: the run waits for one (start workers with `dask "
                          f"worker {address}`; Ctrl-C stops the run)", QdmedWarning,
                          stacklevel=1)

    timer = threading.Timer(wait_s, check)
    timer.daemon = True
    timer.start()
    return timer


def cluster_mismatch(client) -> str:
    """Why a cluster's scheduler could not read qdmed's jobs (distributed says "Error during
    deserialization of the task graph"): it runs another environment or another qdmed
    (seen with a scheduler started before qdmed was updated)."""
    import platform

    import distributed

    from qdmed import __version__

    try:
        address = client.scheduler.address
    except Exception:  # noqa: BLE001 - the message stands without it
        address = "the scheduler"
    return (f"the Dask scheduler at {address} could not read qdmed's jobs: it runs another "
            f"Python environment or another qdmed than this one (qdmed {__version__}, "
            f"Python {platform.python_version()}, distributed {distributed.__version__}); "
            "start the scheduler and its workers from this environment (and again after "
            "updating qdmed)")


def numpy_notices_hidden() -> bool:
    """Whether this process hides numpy's floating-point notices (the command line does,
    :data:`qdmed.errors.NUMPY_FP_NOTICE`): its workers are then told to hide them too."""
    return any(f[0] == "ignore" and f[1] is not None and f[1].pattern == NUMPY_FP_NOTICE
               for f in warnings.filters)


def run_hiding_numpy_notices(fn, *args):
    """``fn(*args)`` with numpy's floating-point notices hidden (on a worker process, which
    does not share the caller's warning filters)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NUMPY_FP_NOTICE, category=RuntimeWarning)
        return fn(*args)


def is_local_client(client) -> bool:
    """Whether a Dask client's workers surely run on this machine, seeing its folders: the
    client of a :class:`distributed.LocalCluster` made in this process (a cohort's, given
    to each slide's analysis). A client of a scheduler elsewhere may have workers anywhere."""
    try:
        from distributed import LocalCluster
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(getattr(client, "cluster", None), LocalCluster)
