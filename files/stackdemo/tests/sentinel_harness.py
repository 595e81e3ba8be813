"""A replicated Redis tier under Sentinel: 3 redis-server data nodes and 3 Sentinels.

Real processes on 127.0.0.1, with the deployment's ACL rules: the tiers' users
(acl_rules), and the replication, Sentinel and Sentinel-client rules from the
stack role's vars. Every data node and every Sentinel has ``user default off``
and an admin user for the harness only.
"""

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import yaml

from acl_rules import ROLE, web_rule, worker_rule
from conftest import ADMIN, WEB_USER, WORKER_USER
from helpers import free_port, stop_process, wait_until

MASTER_NAME = "stack"
REPLICATION_USER = ("stack-replication", "replication-secret")
SENTINEL_NODE_USER = ("stack-sentinel", "sentinel-node-secret")
SENTINEL_PEER_USER = ("stack-sentinel-peer", "sentinel-peer-secret")
SENTINEL_CLIENT_USER = ("stack-sentinel-client", "sentinel-client-secret")
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 10000
MIN_REPLICAS_TO_WRITE = 1
MIN_REPLICAS_MAX_LAG = 10
# CLIENT PAUSE bound of a switchover: the longest the clients' writes wait.
SWITCHOVER_PAUSE_MS = 15000

_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
REPLICATION_RULE = _VARS["stack_redis_replication_acl_rule"]
SENTINEL_NODE_RULE = _VARS["stack_redis_sentinel_acl_rule"]
SENTINEL_PEER_RULE = _VARS["stack_redis_sentinel_acl_rules"]["peer"]
SENTINEL_CLIENT_RULE = _VARS["stack_redis_sentinel_acl_rules"]["client"]


def _user(user: tuple[str, str], rule: str) -> str:
    return f"user {user[0]} on >{user[1]} {rule}\n"


def _admin(port: int, **kwargs) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        username=ADMIN[0],
        password=ADMIN[1],
        socket_timeout=5,
        socket_connect_timeout=5,
        **kwargs,
    )


@dataclass
class Node:
    port: int
    proc: subprocess.Popen
    log: Path

    def client(self, db: int = 0) -> redis.Redis:
        return _admin(self.port, db=db)

    def role(self) -> str | None:
        try:
            return self.client().execute_command("ROLE")[0].decode()
        except redis.RedisError:
            return None


@dataclass
class Tier:
    queues: tuple[str, ...]
    workdir: Path
    nodes: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    def sentinel_urls(self, user: tuple[str, str], db: int) -> str:
        return ";".join(
            f"sentinel://{user[0]}:{user[1]}@127.0.0.1:{s.port}/{db}"
            for s in self.sentinels
        )

    def sentinel_config(self) -> dict[str, str]:
        return {
            "master_name": MASTER_NAME,
            "username": SENTINEL_CLIENT_USER[0],
            "password": SENTINEL_CLIENT_USER[1],
        }

    def master_port(self) -> int | None:
        """The primary's port as the Sentinels agree on it (all of them)."""
        ports = set()
        for sentinel in self.sentinels:
            try:
                _, port = sentinel.client().execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                )
            except (redis.RedisError, TypeError, ValueError):
                return None
            ports.add(int(port))
        return ports.pop() if len(ports) == 1 else None

    def master(self) -> Node:
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def replicas_synced(self) -> bool:
        """Every node up: one primary, two replicas with their link up."""
        try:
            info = self.master().client().info("replication")
        except (StopIteration, redis.RedisError):
            return False
        if info.get("role") != "master" or info.get("connected_slaves") != 2:
            return False
        return (
            all(info[f"slave{i}"]["state"] == "online" for i in range(2))
            and self.sentinels_see_replicas()
        )

    def sentinels_see_replicas(self) -> bool:
        for sentinel in self.sentinels:
            try:
                state = sentinel.client().execute_command(
                    "SENTINEL", "MASTER", MASTER_NAME
                )
            except redis.RedisError:
                return False
            # redis-py parses the reply into a dict (keys spelt per protocol).
            state = {
                (k.decode() if isinstance(k, bytes) else k).replace("_", "-"): v
                for k, v in state.items()
            }
            if int(state["num-slaves"]) < 2 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def switchover(self, timeout: float = 15) -> "Switchover":
        """A lossless planned switchover, as playbooks/ops/switchover.yml does it.

        1. On the old primary: CLIENT PAUSE WRITE. Clients' writes wait.
        2. Wait until every replica acknowledged the primary's whole stream
           (INFO replication: each slaveN offset == master_repl_offset).
        3. SENTINEL FAILOVER on one Sentinel; wait until every Sentinel names
           another primary.
        4. On the old primary, at once: REPLICAOF the new one, CLIENT KILL the
           normal and pub/sub clients (not this admin connection: SKIPME yes),
           CLIENT UNPAUSE. The paused writes never run there; their clients
           reconnect through the Sentinels and retry on the new primary.
        """
        old = self.master()
        admin = old.client()
        result = Switchover(old_port=old.port)
        deadline = time.monotonic() + timeout
        admin.execute_command("CLIENT", "PAUSE", SWITCHOVER_PAUSE_MS, "WRITE")
        result.paused_at = time.monotonic()
        try:
            while True:
                info = admin.info("replication")
                offset = info["master_repl_offset"]
                offsets = [
                    info[f"slave{i}"]["offset"] for i in range(info["connected_slaves"])
                ]
                if len(offsets) == 2 and all(o == offset for o in offsets):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"replicas behind: {offset} vs {offsets}")
                time.sleep(0.01)
            result.synced_at = time.monotonic()
            self.sentinels[0].client().execute_command(
                "SENTINEL", "FAILOVER", MASTER_NAME
            )
            while True:
                port = self.master_port()
                if port not in (None, old.port):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError("the Sentinels did not fail over")
                time.sleep(0.01)
            result.promoted_at = time.monotonic()
            result.new_port = port
            admin.execute_command("REPLICAOF", "127.0.0.1", port)
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal")
            admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
            result.unpaused_at = time.monotonic()
            admin.close()
        return result

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
            stop_process(node.proc)


@dataclass
class Switchover:
    """Monotonic times of a switchover's steps."""

    old_port: int
    new_port: int | None = None
    paused_at: float = 0.0
    synced_at: float = 0.0
    promoted_at: float = 0.0
    unpaused_at: float = 0.0


def start_tier(workdir: Path, redis_server: str, queues: tuple[str, ...]) -> Tier:
    tier = Tier(queues=queues, workdir=workdir)
    try:
        _start(tier, redis_server)
    except BaseException:
        tier.stop()
        raise
    return tier


def _start(tier: Tier, redis_server: str) -> None:
    workdir = tier.workdir
    ports = [free_port() for _ in range(3)]
    for index, port in enumerate(ports):
        home = workdir / f"node{index}"
        home.mkdir()
        acl = home / "users.acl"
        acl.write_text(
            "user default off\n"
            f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all\n"
            f"user {WEB_USER[0]} {web_rule(WEB_USER[1], tier.queues)}\n"
            f"user {WORKER_USER[0]} {worker_rule(WORKER_USER[1], tier.queues)}\n"
            + _user(REPLICATION_USER, REPLICATION_RULE)
            + _user(SENTINEL_NODE_USER, SENTINEL_NODE_RULE)
        )
        conf = home / "redis.conf"
        text = (
            f"port {port}\nbind 127.0.0.1\ndir {home}\n"
            'save ""\nappendonly no\n'
            f"aclfile {acl}\nlogfile {home / 'redis.log'}\n"
            f"masteruser {REPLICATION_USER[0]}\nmasterauth {REPLICATION_USER[1]}\n"
            # A freshly started replica must not serve stale reads forever.
            "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n"
            # As the role sets them on a replicated tier, on every node (a
            # promoted replica keeps them): a primary left without replicas
            # refuses writes (NOREPLICAS) instead of taking writes nobody keeps.
            f"min-replicas-to-write {MIN_REPLICAS_TO_WRITE}\n"
            f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG}\n"
        )
        if index:
            text += f"replicaof 127.0.0.1 {ports[0]}\n"
        conf.write_text(text)
        proc = subprocess.Popen([redis_server, str(conf)])
        tier.nodes.append(Node(port=port, proc=proc, log=home / "redis.log"))
    for node in tier.nodes:
        wait_until(lambda n=node: n.role(), "a data node to answer", proc=node.proc)

    for index in range(3):
        home = workdir / f"sentinel{index}"
        home.mkdir()
        port = free_port()
        conf = home / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {home}\n"
            f"logfile {home / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {ports[0]} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            f"sentinel auth-user {MASTER_NAME} {SENTINEL_NODE_USER[0]}\n"
            f"sentinel auth-pass {MASTER_NAME} {SENTINEL_NODE_USER[1]}\n"
            f"sentinel sentinel-user {SENTINEL_PEER_USER[0]}\n"
            f"sentinel sentinel-pass {SENTINEL_PEER_USER[1]}\n"
            "user default off\n"
            f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all\n"
            + _user(SENTINEL_PEER_USER, SENTINEL_PEER_RULE)
            + _user(SENTINEL_CLIENT_USER, SENTINEL_CLIENT_RULE)
        )
        proc = subprocess.Popen([redis_server, str(conf), "--sentinel"])
        tier.sentinels.append(Node(port=port, proc=proc, log=home / "sentinel.log"))
    for sentinel in tier.sentinels:
        wait_until(
            lambda s=sentinel: _pings(s), "a Sentinel to answer", proc=sentinel.proc
        )
    wait_until(tier.replicas_synced, "replication and Sentinels to settle", 30)


def _pings(node: Node) -> bool:
    try:
        return bool(node.client().ping())
    except redis.RedisError:
        return False


def wait_for_new_master(tier: Tier, old_port: int, timeout: float = 30) -> float:
    """Seconds until every Sentinel names another primary than ``old_port``."""
    started = time.monotonic()
    wait_until(
        lambda: tier.master_port() not in (None, old_port),
        "the Sentinels to fail over",
        timeout,
    )
    return time.monotonic() - started
