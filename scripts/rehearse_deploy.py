#!/usr/bin/env python3
"""A rehearsal of Railway's deploy sequence on one machine, under load, watched from the server side.

    python scripts/rehearse_deploy.py                         # the graph's overlap / draining, 3 runs' worth
    python scripts/rehearse_deploy.py --overlap 2 --drain 10  # shorter windows
    python scripts/rehearse_deploy.py --services api --duration short   # one phase, about a minute

What Railway does on a deploy, played from the generated Railway graph (``.railway/railway.py``:
``main(create_railway_context(environment=...)).to_graph()``) for each service: run its
``preDeployCommand``; start the new deployment with its ``startCommand`` and the service's variables;
wait until it is live (the API: ``healthcheckPath`` answers 200 within ``healthcheckTimeout``; a service
without a healthcheck, as Railway does, as soon as it runs); let old and new run side by side for
``overlapSeconds``; send SIGTERM to the old deployment's main process (PID 1 in its container); give
it ``drainingSeconds``; then SIGKILL whatever is left of it (the whole container). One service at a
time (api, celery_logs, celery_content, celery_workflow), then all four at once; a phase ends when
the new set consumes (a worker's ``ready.``), so the next starts from a steady state.

Everything on loopback, every process it starts stopped at the end:

* its own PostgreSQL (max_connections=400, like the managed instance) and Redis, on free ports; the
  graph's shared references (DATABASE_URL, REDIS_URL, JWT_SECRET_KEY) resolve to them;
* HAProxy stands in for Railway's edge: two pre-declared API servers (blue and green, one per
  deployment, alternating), health-checked on the graph's healthcheckPath every 300 ms and taken out
  after two failures; a refused connection is retried on the other server (``retries 3``,
  ``option redispatch 1``); the new server is enabled through HAProxy's runtime API once healthy;
* load through HAProxy for the whole run: wrk reads (a roadmap's detail and the task events, with an
  admin bearer token minted by ``python -m app.core.security``) in back-to-back chunks, and roadmap
  POSTs with an ``Idempotency-Key`` (offline LLM and search providers, a few concepts each), each
  retried with the same key on a 5xx or a transport error;
* pg_stat_activity sampled every 50 ms from a thread with its own connection (not counted), by
  environment (the ``<environment>.`` prefix of application_name) and by service.

Scaled down to fit a 2-core machine, through the same settings variables the graph and the budget
use: process counts (UVICORN_WORKERS=2, CELERY_LOGS_CONCURRENCY=1, CELERY_CONTENT_CONCURRENCY=2,
CELERY_WORKFLOW_CONCURRENCY=1) and one replica per service (<PREFIX>_REPLICAS=1; the graph's
numReplicas are printed); pool sizes are the graph's (else the environment's profile). The budget is
recomputed for that scaled topology with ``python -m app.budget --json --set NAME=VALUE ...`` in the
services' own environment, and the run is judged against its deploy-window figures: one service's
old and new set side by side (steady + that service), and all four at once.

It prints client errors and 5xx (wrk's non-2xx and socket errors, the POST driver's), roadmaps
accepted (202) against completed, each concept written exactly once (one ``concept_written`` event
per concept, no duplicate positions), peak server connections of the environment per phase against
the deploy-window figures and the allocation; draws connections over time with the phases marked
(PNG, default docs/benchmarks/rehearse-deploy.png). Exit status 1 when a request failed, a roadmap did
not complete exactly once, or a peak exceeded its figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from app import topology as app_topology  # every service, declared once
from app.config.settings import Settings
from devkit.edge import haproxy_binary
from devkit.pg_activity import Sampler
from devkit.ports import free_port
from devkit.postgres import OwnPostgres
from devkit.railway_config import RAILWAY_FILE, REFERENCED, compile_graph
from devkit.redis_server import OwnRedis
from devkit.wrk import ensure_wrk, wrk_stage

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"

SERVICES = app_topology.NAMES
PNG = ROOT / "docs" / "benchmarks" / "rehearse-deploy.png"

# The 2-core machine's topology: the same variables the graph and the budget use, smaller values.
SCALE_DOWN = {
    "UVICORN_WORKERS": "2",
    "CELERY_LOGS_CONCURRENCY": "1",
    "CELERY_CONTENT_CONCURRENCY": "2",
    "CELERY_WORKFLOW_CONCURRENCY": "1",
    **{s.replicas_var: "1" for s in app_topology.SERVICES},
}
# What the rehearsal itself needs from the services, beyond the graph: offline providers, and quotas
# that do not refuse one synthetic user's steady stream of roadmaps.
HARNESS_VARIABLES = {
    "LLM_PROVIDER": "offline",
    "LLM_OFFLINE_LATENCY": "0.2",
    "SEARCH_PROVIDER": "offline",
    "SEARCH_OFFLINE_LATENCY": "0.05",
    "ROADMAP_CREATE_RATE_LIMIT": "100000/minute",
    "ROADMAP_MAX_IN_PROGRESS": "10000",
    "LOG_LEVEL": "INFO",
}


@dataclass(frozen=True)
class Duration:
    warmup: float  # load before the first phase
    gap: float  # between phases
    chunk: float  # one wrk run; errors are located to within a chunk
    post_every: float  # a roadmap POST every so often
    concepts: int
    settle: float  # after the load, at most this long for the accepted roadmaps to finish


DURATIONS = {
    "full": Duration(warmup=10, gap=5, chunk=3, post_every=1.0, concepts=4, settle=180),
    "short": Duration(warmup=3, gap=2, chunk=2, post_every=1.0, concepts=2, settle=60),
}


# --- the graph -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig:
    """One service of the graph, as this rehearsal plays it."""

    name: str
    start_command: str
    pre_deploy: tuple[str, ...]
    healthcheck_path: str | None
    healthcheck_timeout: float
    num_replicas: int
    overlap: float
    draining: float
    variables: dict[str, str]  # literals, shared references resolved


def resolve_variables(raw: dict[str, Any], shared: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, value in raw.items():
        kind = value.get("type")
        if kind == "literal" or kind == "raw":
            out[name] = str(value["value"])
        elif kind in ("sharedReference", "reference"):
            key = value.get("name") or value.get("output")
            if key not in shared:
                raise SystemExit(f"variable {name}: no local value for the reference {value}")
            out[name] = shared[key]
        elif kind == "preserve":
            continue
        else:
            raise SystemExit(f"variable {name}: unknown variable type {kind!r}")
    return out


def services_from_graph(
    graph: dict[str, Any], shared: dict[str, str], overlap: float | None, drain: float | None
) -> dict[str, ServiceConfig]:
    found = {}
    for node in graph.get("resources", []):
        if node.get("type") != "service" or node.get("name") not in SERVICES:
            continue
        deploy = node.get("deploy") or {}
        pre = deploy.get("preDeployCommand") or []
        found[node["name"]] = ServiceConfig(
            name=node["name"],
            start_command=deploy["startCommand"],
            pre_deploy=tuple([pre] if isinstance(pre, str) else pre),
            healthcheck_path=deploy.get("healthcheckPath"),
            healthcheck_timeout=float(deploy.get("healthcheckTimeout") or 300),
            num_replicas=int(deploy.get("numReplicas") or 1),
            overlap=float(overlap if overlap is not None else deploy.get("overlapSeconds") or 0),
            draining=float(drain if drain is not None else deploy.get("drainingSeconds") or 0),
            variables=resolve_variables(node.get("variables") or {}, shared),
        )
    missing = [s for s in SERVICES if s not in found]
    if missing:
        raise SystemExit(f"the graph has no service {', '.join(missing)}")
    return found


# --- the budget --------------------------------------------------------------------------------------


def budget_json(env: dict[str, str], overrides: dict[str, str]) -> tuple[dict[str, Any], str]:
    """``python -m app.budget --json --set ...`` in the services' own environment, and the command."""
    argv = [sys.executable, "-m", "app.budget", "--json"]
    for name, value in overrides.items():
        argv += ["--set", f"{name}={value}"]
    # exit 1 means "does not fit": still the figures we want to print
    done = subprocess.run(argv, cwd=BACKEND, env=env, capture_output=True, text=True, check=False)
    if not done.stdout.strip():
        raise SystemExit(f"python -m app.budget failed: {done.stderr[-2000:]}")
    shown = "python -m app.budget --json " + " ".join(f"--set {k}={v}" for k, v in overrides.items())
    return json.loads(done.stdout), shown


def deploy_window(budget: dict[str, Any]) -> dict[str, Any]:
    """The budget's deploy-window figures: steady state, one service's old and new set side by side
    (the biggest service: the one-at-a-time worst case), all four services at once.

    From the budget's own ``steady`` / ``deploy`` keys when it has them; otherwise computed here the
    same way (one service: steady + its max_connections; all: every pool twice, the admin reserve once).
    """
    per_service = {s["service"]: s["max_connections"] for s in budget["services"]}
    if "deploy" in budget:
        steady = budget["steady"]["worst_case"]
        one = budget["deploy"]["one_service"]
        return {
            "steady": steady,
            "one_service": one["worst_case"],
            "one_service_name": one["service"],
            "all_services": budget["deploy"]["all_services"]["worst_case"],
            "per_service": {name: steady + n for name, n in per_service.items()},
            "allocation": budget["allocation"],
            "source": "app.budget",
        }
    steady = budget["worst_case"]
    biggest = max(per_service, key=lambda name: per_service[name])
    return {
        "steady": steady,
        "one_service": steady + per_service[biggest],
        "one_service_name": biggest,
        "all_services": 2 * steady - budget["admin_reserve"],
        "per_service": {name: steady + n for name, n in per_service.items()},
        "allocation": budget["allocation"],
        "source": "computed here (the budget has no deploy keys yet)",
    }


# --- HAProxy, Railway's edge --------------------------------------------------------------------------

HAPROXY_CONFIG = """
global
    stats socket {folder}/admin.sock mode 600 level admin
    maxconn 4000
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    option log-health-checks
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    retries 3
    option redispatch 1
    retry-on conn-failure

frontend edge
    bind 127.0.0.1:{port}
    default_backend api

backend api
    balance roundrobin
    option httpchk GET {health}
    http-check expect status 200
    default-server check inter 300ms fastinter 250ms downinter 300ms fall 2 rise 1
    server blue 127.0.0.1:{blue}
    server green 127.0.0.1:{green} disabled
"""


class Edge:
    """HAProxy with two pre-declared API servers; the deploy enables and disables them at runtime."""

    def __init__(self, folder: Path, health: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.ports = {"blue": free_port(), "green": free_port()}
        self.health = health
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "haproxy.log"

    def start(self) -> Edge:
        binary = haproxy_binary()
        if binary is None:
            raise SystemExit("haproxy is not installed: apt-get install haproxy")
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(
            HAPROXY_CONFIG.format(folder=self.folder, port=self.port, health=self.health, **self.ports)
        )
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(cfg)], stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while not (self.folder / "admin.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        return self

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.folder / "admin.sock"))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def set_state(self, server: str, state: str) -> None:
        self.command(f"set server api/{server} state {state}")

    def server_status(self, server: str) -> str:
        # show stat: CSV, field 17 (0-based) is status
        for line in self.command("show stat").splitlines():
            cells = line.split(",")
            if len(cells) > 17 and cells[0] == "api" and cells[1] == server:
                return cells[17]
        return "?"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- deployments ----------------------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Any process of the container (its process group) that is not a zombie."""
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@dataclass
class Deployment:
    """One deployment of one service: its own process group, stands in for a container."""

    config: ServiceConfig
    serial: int
    env: dict[str, str]
    log: Path
    slot: str | None = None  # the API's HAProxy server
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    live: float | None = None
    ready_at: float | None = None
    sigterm: float | None = None
    gone: float | None = None
    killed: bool = False
    exit_code: int | None = None

    @property
    def label(self) -> str:
        return f"{self.config.name}#{self.serial}"

    def start(self, t0: float) -> None:
        self.started = time.monotonic() - t0
        self.proc = subprocess.Popen(
            shlex.split(self.config.start_command), cwd=BACKEND, env=self.env,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    async def healthy(self, client: httpx.AsyncClient) -> bool:
        if self.config.healthcheck_path:
            try:
                r = await client.get(f"http://127.0.0.1:{self.port}{self.config.healthcheck_path}", timeout=2)
                return r.status_code == 200
            except httpx.HTTPError:
                return False
        # No healthcheck: Railway takes the deployment as live once its container runs.
        return True

    def ready(self) -> bool:
        """A worker consumes once Celery says so; the API once it answers its health check."""
        return self.config.healthcheck_path is not None or " ready." in self.log.read_text(errors="replace")

    def terminate(self, t0: float) -> None:
        """SIGTERM to the main process only, as the platform does to a container's PID 1."""
        self.sigterm = time.monotonic() - t0
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def alive(self) -> bool:
        assert self.proc is not None
        self.proc.poll()
        return group_alive(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL to the whole container."""
        assert self.proc is not None
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class Phase:
    name: str
    services: tuple[str, ...]
    start: float = 0.0
    pre_deploy_end: float = 0.0
    end: float = 0.0
    pairs: list[tuple[Deployment, Deployment | None]] = field(default_factory=list)  # (new, old)

    def as_dict(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        steps = []
        for new, old in self.pairs:
            step: dict[str, Any] = {"service": new.config.name, "new": new.label, "started": new.started,
                                    "live": new.live, "ready": new.ready_at, "old": None}  # fmt: skip
            if old is not None:
                step |= {"old": old.label, "sigterm": old.sigterm, "gone": old.gone, "killed": old.killed,
                         "exit_code": old.exit_code}  # fmt: skip
            steps.append(step)
        return {"name": self.name, "services": list(self.services), "start": self.start,
                "pre_deploy_end": self.pre_deploy_end, "end": self.end,
                "peak": peak(points, self.start, self.end), "steps": steps}  # fmt: skip


class Rehearsal:
    def __init__(
        self, configs: dict[str, ServiceConfig], base_env: dict[str, str], folder: Path, edge: Edge
    ) -> None:
        self.configs = configs
        self.base_env = base_env
        self.folder = folder
        self.edge = edge
        self.current: dict[str, Deployment] = {}
        self.started: list[Deployment] = []  # every deployment, to stop whatever a failed run left
        self.serial = 0
        self.t0 = time.monotonic()
        self.wall_t0 = time.time()  # HAProxy's log has wall-clock times
        self.unexpected_exits: list[str] = []

    def _deployment(self, name: str) -> Deployment:
        self.serial += 1
        config = self.configs[name]
        env = {
            **self.base_env,
            **config.variables,
            **SCALE_DOWN_ACTIVE,
            "SERVICE_TYPE": name,
            "PROMETHEUS_MULTIPROC_DIR": str(self.folder / f"prom-{name}-{self.serial}"),
        }
        d = Deployment(config, self.serial, env, self.folder / f"{name}-{self.serial}.log")
        if config.healthcheck_path:
            old = self.current.get(name)
            d.slot = "green" if old is not None and old.slot == "blue" else "blue"
            d.port = self.edge.ports[d.slot]
            d.env["PORT"] = str(d.port)
        return d

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def pre_deploy(self, names: tuple[str, ...]) -> float:
        """Each service's preDeployCommand, concurrently, as Railway runs one per service deploy."""
        started = time.monotonic()
        procs = []
        for name in names:
            config = self.configs[name]
            env = {**self.base_env, **config.variables, **SCALE_DOWN_ACTIVE, "SERVICE_TYPE": name}
            for command in config.pre_deploy:
                log = (self.folder / f"predeploy-{name}.log").open("ab")
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *shlex.split(command), cwd=BACKEND, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        for proc in procs:
            code = await asyncio.wait_for(proc.wait(), timeout=120)
            if code != 0:
                raise RuntimeError(f"preDeployCommand exited {code}: see {self.folder}/predeploy-*.log")
        return time.monotonic() - started

    async def deploy(self, phase: Phase, client: httpx.AsyncClient) -> None:
        """Start the new deployments, wait until each is live, overlap, SIGTERM, drain, SIGKILL."""
        phase.start = self.now()
        seconds = await self.pre_deploy(phase.services)
        phase.pre_deploy_end = self.now()
        print(f"  [{phase.name}] t={self.now():.1f} s: preDeployCommand done in {seconds:.1f} s", flush=True)
        new = {name: self._deployment(name) for name in phase.services}
        old = {name: self.current.get(name) for name in phase.services}
        phase.pairs = [(new[name], old[name]) for name in phase.services]
        for d in new.values():
            d.start(self.t0)
            self.started.append(d)
        pending = set(new)
        while pending:  # each service goes through its own steps; bounded by every step's deadline
            for name in sorted(pending):
                d, previous, config = new[name], old[name], self.configs[name]
                now = self.now()
                if d.live is not None and d.ready_at is None and d.ready():
                    d.ready_at = now
                if d.live is None:
                    assert d.proc is not None
                    if d.proc.poll() is not None:
                        raise RuntimeError(f"{d.label} exited {d.proc.returncode} while starting: {d.log}")
                    if await d.healthy(client):
                        d.live = now
                        if d.slot:
                            self.edge.set_state(d.slot, "ready")
                        print(
                            f"  [{phase.name}] t={now:.1f} s: {d.label} live after {now - d.started:.1f} s",
                            flush=True,
                        )
                    elif now - d.started > config.healthcheck_timeout:
                        raise RuntimeError(f"{d.label} not healthy within {config.healthcheck_timeout} s")
                    continue
                if previous is None:
                    pending.discard(name)
                    continue
                if previous.sigterm is None:
                    if now - d.live >= config.overlap:
                        previous.terminate(self.t0)
                        print(f"  [{phase.name}] t={self.now():.1f} s: SIGTERM {previous.label}", flush=True)
                    continue
                if not previous.alive():
                    previous.gone = now
                    assert previous.proc is not None
                    previous.exit_code = previous.proc.wait()
                elif now - previous.sigterm >= config.draining:
                    previous.kill()
                    previous.gone = self.now()
                    previous.exit_code = -9
                if previous.gone is not None:
                    if previous.slot:
                        self.edge.set_state(previous.slot, "maint")
                    how = "SIGKILL after draining" if previous.killed else f"exited {previous.exit_code}"
                    print(
                        f"  [{phase.name}] t={previous.gone:.1f} s: {previous.label} gone "
                        f"{previous.gone - previous.sigterm:.1f} s "
                        f"after SIGTERM ({how})",
                        flush=True,
                    )
                    pending.discard(name)
            await asyncio.sleep(0.1)
        self.current.update(new)
        # Not part of Railway's sequence (the old workers may be gone already): the phase ends when the
        # new set consumes, so the next one starts from a steady state.
        deadline = time.monotonic() + 120
        while not all(d.ready_at is not None for d in new.values()):
            for d in new.values():
                assert d.proc is not None
                if d.proc.poll() is not None:
                    raise RuntimeError(f"{d.label} exited {d.proc.returncode}: {d.log}")
                if d.ready_at is None and d.ready():
                    d.ready_at = self.now()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the new set of {phase.name} did not become ready within 120 s")
            await asyncio.sleep(0.1)
        phase.end = self.now()

    def check_running(self) -> None:
        for d in self.current.values():
            assert d.proc is not None
            if d.proc.poll() is not None and d.label not in self.unexpected_exits:
                self.unexpected_exits.append(d.label)
                print(f"  !! {d.label} exited {d.proc.returncode} on its own: {d.log}", flush=True)

    def stop_all(self) -> None:
        for d in self.started:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for d in self.started:
            while d.proc is not None and d.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if d.proc is not None and d.alive():
                d.kill()


SCALE_DOWN_ACTIVE: dict[str, str] = {}  # SCALE_DOWN plus --set, fixed once in main()


# --- load -------------------------------------------------------------------------------------------


@dataclass
class Load:
    chunks: list[dict[str, Any]] = field(default_factory=list)  # wrk runs
    posts: list[dict[str, Any]] = field(default_factory=list)  # every POST attempt
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> roadmap id


async def read_load(
    base: str, token: str, load: Load, stop: asyncio.Event, duration: Duration, t0: float, folder: Path,
    connections: int, first_id: str,
) -> None:  # fmt: skip
    """wrk reads, chunk after chunk, until told to stop."""
    paths = [f"/api/v1/roadmaps/{first_id}", "/api/v1/task-logs?limit=5"]
    while not stop.is_set():
        started = time.monotonic() - t0
        stage = await wrk_stage(base, connections, duration.chunk, paths, token, folder)
        load.chunks.append(
            {"start": started, "end": time.monotonic() - t0, "statuses": stage.statuses,
             "socket_errors": stage.socket_errors, "requests": stage.requests, "p99_ms": stage.p99_ms}
        )  # fmt: skip


async def post_load(
    http: httpx.AsyncClient, headers: dict[str, str], load: Load, stop: asyncio.Event, duration: Duration,
    t0: float,
) -> None:  # fmt: skip
    """A roadmap POST every ``post_every`` s; a 5xx or transport error is retried with the same key."""

    async def create(n: int) -> None:
        key = str(uuid.uuid4())
        body = {"topic": f"Deploy rehearsal {n}", "concept_count": duration.concepts}
        for attempt in range(1, 4):
            t = time.monotonic() - t0
            try:
                r = await http.post(
                    "/api/v1/roadmaps", json=body, headers={**headers, "Idempotency-Key": key}
                )
                status, detail = r.status_code, r.text[:200] if r.status_code >= 300 else ""
                if status == 202:
                    load.accepted[key] = r.json()["id"]
            except httpx.HTTPError as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"
            load.posts.append({"t": t, "key": key, "attempt": attempt, "status": status, "detail": detail})
            if status == 202 or 400 <= status < 500:
                return
            await asyncio.sleep(0.5)

    tasks = []
    n = 0
    while not stop.is_set():
        n += 1
        tasks.append(asyncio.create_task(create(n)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration.post_every)
    await asyncio.gather(*tasks)


async def roadmap_outcome(url: str, ids: list[str], settle: float) -> dict[str, Any]:
    """Waits (at most ``settle`` s) for the accepted roadmaps to finish; then what became of each."""
    conn = await asyncpg.connect(url, server_settings={"application_name": "rehearsal.check"})
    try:
        deadline = time.monotonic() + settle
        while True:
            left = await conn.fetchval(
                "SELECT count(*) FROM roadmaps WHERE id = ANY($1::uuid[])"
                " AND status NOT IN ('completed', 'failed')",
                ids,
            )
            if not left or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        rows = await conn.fetch(
            """
            SELECT r.id, r.status, r.requested_concepts,
                   count(c.id) AS concepts,
                   count(c.id) FILTER (WHERE c.status = 'completed') AS completed,
                   count(c.id) - count(DISTINCT c.position) AS duplicate_positions
            FROM roadmaps r LEFT JOIN concepts c ON c.roadmap_id = r.id
            WHERE r.id = ANY($1::uuid[]) GROUP BY r.id
            """,
            ids,
        )
        # One concept_written event per concept: it commits with the concept's content.
        written = await conn.fetch(
            """
            SELECT c.id, count(t.id) AS events
            FROM concepts c LEFT JOIN task_logs t
              ON t.event = 'concept_written' AND t.payload->>'concept_id' = c.id::text
            WHERE c.roadmap_id = ANY($1::uuid[]) GROUP BY c.id
            """,
            ids,
        )
    finally:
        await conn.close()
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    complete_once = sum(
        1
        for r in rows
        if r["status"] == "completed"
        and r["concepts"] == r["requested_concepts"] == r["completed"]
        and not r["duplicate_positions"]
    )
    events = [w["events"] for w in written]
    return {
        "accepted": len(ids),
        "found": len(rows),
        "statuses": statuses,
        "completed_exactly_once": complete_once,
        "duplicate_positions": sum(r["duplicate_positions"] for r in rows),
        "concepts": len(events),
        "concepts_written_once": sum(1 for e in events if e == 1),
        "concepts_written_twice_or_more": sum(1 for e in events if e > 1),
        "concepts_never_written": sum(1 for e in events if e == 0),
    }


# --- connections ------------------------------------------------------------------------------------


def timeline(sampler: Sampler, environment: str) -> list[dict[str, Any]]:
    """Per sample: the environment's total and each service's (the checkpointer counts for its service)."""
    out = []
    for t, counts in sampler.samples:
        point: dict[str, Any] = {"t": round(t, 3), "total": 0, "other": 0, **dict.fromkeys(SERVICES, 0)}
        for name, n in counts.items():
            parts = name.split(".")
            if parts[0] != environment:
                continue
            point["total"] += n
            point[parts[1] if len(parts) > 1 and parts[1] in SERVICES else "other"] += n
        out.append(point)
    return out


def peak(points: list[dict[str, Any]], start: float, end: float, key: str = "total") -> int:
    return max((p[key] for p in points if start <= p["t"] <= end), default=0)


# --- the run -----------------------------------------------------------------------------------------


def mint_token(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.core.security", "--sub", "rehearsal", "--role", "admin",
         "--minutes", "120"],
        cwd=BACKEND, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


async def play(
    args: argparse.Namespace, configs: dict[str, ServiceConfig], base_env: dict[str, str], url: str,
    admin_url: str, folder: Path, window: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    duration = DURATIONS[args.duration]
    api = configs["api"]
    edge = Edge(folder, api.healthcheck_path or "/health").start()
    rehearsal = Rehearsal(configs, base_env, folder, edge)
    sampler = Sampler(admin_url, interval=0.05)
    sampler.t0 = rehearsal.t0
    sampler.start()
    phases: list[Phase] = []
    load = Load()
    stop = asyncio.Event()
    base = f"http://127.0.0.1:{edge.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            initial = Phase("initial", SERVICES)
            print("initial deploy (the old set) ...", flush=True)
            await rehearsal.deploy(initial, http)
            token = mint_token({**base_env, **api.variables})
            headers = {"Authorization": f"Bearer {token}"}
            first = await http.post(
                "/api/v1/roadmaps",
                json={"topic": "Deploy rehearsal reads", "concept_count": duration.concepts},
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            )
            first.raise_for_status()
            first_id = first.json()["id"]
            load.accepted["reads"] = first_id
            loads = [
                asyncio.create_task(
                    read_load(
                        base, token, load, stop, duration, rehearsal.t0, folder, args.connections, first_id
                    )
                ),
                asyncio.create_task(post_load(http, headers, load, stop, duration, rehearsal.t0)),
            ]
            load_start = rehearsal.now()
            print(
                f"load on: wrk -c{args.connections} reads + a POST every {duration.post_every:g} s",
                flush=True,
            )
            await asyncio.sleep(duration.warmup)
            order = [(name, (name,)) for name in args.services]
            if args.all:
                order.append(("all", SERVICES))
            for name, names in order:
                phase = Phase(name, names)
                print(f"deploy {name} ...", flush=True)
                await rehearsal.deploy(phase, http)
                phases.append(phase)
                rehearsal.check_running()
                await asyncio.sleep(duration.gap)
            stop.set()
            await asyncio.gather(*loads)
            load_end = rehearsal.now()
            rehearsal.check_running()
            print(f"load off; waiting up to {duration.settle:g} s for the accepted roadmaps", flush=True)
            outcome = await roadmap_outcome(url, list(load.accepted.values()), duration.settle)
            settled = rehearsal.now()
    finally:
        stop.set()
        sampler.stop()
        rehearsal.stop_all()
        edge.stop()
    points = timeline(sampler, base_env["ENVIRONMENT"])
    return {
        "phases": [p.as_dict(points) for p in [initial, *phases]],
        "load": {"start": load_start, "end": load_end, "settled": settled},
        "chunks": load.chunks,
        "posts": load.posts,
        "roadmaps": outcome,
        "timeline": points,
        "samples_per_second": len(points) / max(1e-9, points[-1]["t"] - points[0]["t"]) if points else 0,
        "unexpected_exits": rehearsal.unexpected_exits,
        "edge": edge_log(edge.log.read_text(errors="replace"), rehearsal.wall_t0),
        "window": window,
    }


HAPROXY_LINE = re.compile(
    r"^\S+ \[(?P<date>[^\]]+)\] \S+ (?P<server>\S+) \S+ (?P<status>-?\d+) \S+ \S+ \S+ (?P<term>\S{4}) "
    r'\S+/\S+/\S+/\S+/(?P<retries>\+?\d+) \S+ "(?P<request>[^"]*)"'
)


def edge_log(text: str, wall_t0: float) -> dict[str, Any]:
    """HAProxy logs only requests that were not plain successes (dontlog-normal): the ones it retried
    on the other server, and the ones that failed, at run time t (s)."""
    redispatched, failed = 0, []
    for line in text.splitlines():
        m = HAPROXY_LINE.match(line)
        if m is None:
            continue
        status, term = int(m["status"]), m["term"]
        if m["request"] == "<BADREQ>" and term.startswith("CR"):
            continue  # wrk closing its idle connections at the end of a chunk
        if m["retries"].startswith("+") or int(m["retries"].lstrip("+")) > 0:
            redispatched += 1
        if status >= 500 or status <= 0 or term[:2] not in ("--", "CD"):
            when = datetime.strptime(m["date"], "%d/%b/%Y:%H:%M:%S.%f").timestamp() - wall_t0
            failed.append(f"t={when:.2f} s {m['server']} {status} {term} {m['request']}")
    return {"redispatched": redispatched, "failed": failed}


def phase_figure(window: dict[str, Any], phase: dict[str, Any]) -> int:
    """What the budget allows during a phase: steady + the service redeploying, or all of them twice."""
    if phase["name"] == "all":
        return window["all_services"]
    if len(phase["services"]) == 1:
        return window["per_service"][phase["services"][0]]
    return window["steady"]


def steady_peak(result: dict[str, Any]) -> int:
    """The environment's peak under load outside every deploy: one set of services running."""
    deploys = [(p["start"], p["end"]) for p in result["phases"] if p["name"] != "initial"]
    load = result["load"]
    return max(
        (
            point["total"]
            for point in result["timeline"]
            if load["start"] <= point["t"] <= load["end"]
            and not any(a <= point["t"] <= b for a, b in deploys)
        ),
        default=0,
    )


def failed(status: int) -> bool:
    return status == 0 or status >= 300


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    window = result["window"]
    wrk: dict[int, int] = {}
    for chunk in result["chunks"]:
        for status, n in chunk["statuses"].items():
            wrk[int(status)] = wrk.get(int(status), 0) + n
    posts: dict[int, int] = {}
    for p in result["posts"]:
        posts[p["status"]] = posts.get(p["status"], 0) + 1
    deploys = [p for p in result["phases"] if p["name"] != "initial"]
    roadmaps = result["roadmaps"]
    summary: dict[str, Any] = {
        "wrk": wrk,
        "posts": posts,
        "failed_chunks": [c for c in result["chunks"] if any(failed(int(s)) for s in c["statuses"])],
        "wrk_failed": sum(n for s, n in wrk.items() if failed(s)),
        "wrk_5xx": sum(n for s, n in wrk.items() if s >= 500),
        "post_failed_attempts": sum(n for s, n in posts.items() if failed(s)),
        "post_5xx": sum(n for s, n in posts.items() if s >= 500),
        "roadmaps_not_completed_once": roadmaps["accepted"] - roadmaps["completed_exactly_once"],
        "concepts_not_written_once": roadmaps["concepts"] - roadmaps["concepts_written_once"],
        "steady_peak": steady_peak(result),
        "one_service_peak": max((p["peak"] for p in deploys if p["name"] != "all"), default=0),
        "all_services_peak": max((p["peak"] for p in deploys if p["name"] == "all"), default=0),
        "killed": [s["old"] for p in deploys for s in p["steps"] if s["old"] and s["killed"]],
    }
    over = [
        f"{p['name']} {p['peak']} > {phase_figure(window, p)}"
        for p in deploys
        if p["peak"] > phase_figure(window, p)
    ]
    if summary["steady_peak"] > window["steady"]:
        over.append(f"steady {summary['steady_peak']} > {window['steady']}")
    over += [
        f"deploy figure {name} {window[name]} > allocation {window['allocation']}"
        for name in ("one_service", "all_services")
        if window[name] > window["allocation"]
    ]
    summary["over"] = over
    summary["ok"] = not (
        summary["wrk_failed"] or summary["post_failed_attempts"] or summary["roadmaps_not_completed_once"]
        or summary["concepts_not_written_once"] or over or result["unexpected_exits"]
    )  # fmt: skip
    return summary


def unconsumed(step: dict[str, Any]) -> str:
    """How long a worker's queue had no consumer: the old set gone before the new one was ready."""
    if step["service"] == "api" or step["ready"] is None or step["ready"] <= step["gone"]:
        return ""
    return f", queue unconsumed {step['ready'] - step['gone']:.1f} s"


def report(result: dict[str, Any], summary: dict[str, Any]) -> None:
    window = result["window"]
    print("\n== deploy rehearsal ==")
    print(
        f"budget ({window['source']}): steady {window['steady']}, one service at a time "
        f"{window['one_service']} (worst: {window['one_service_name']}), "
        f"all at once {window['all_services']}, allocation {window['allocation']}"
    )
    print(f"pg_stat_activity sampled at {result['samples_per_second']:.1f} Hz")
    print(f"{'phase':<18}{'peak':>6}{'budget':>8}{'alloc.':>8}   old set after SIGTERM")
    print(f"{'steady (loaded)':<18}{summary['steady_peak']:>6}{window['steady']:>8}{window['allocation']:>8}")
    for p in result["phases"]:
        if p["name"] == "initial":
            continue
        olds = ", ".join(
            f"{s['old']} gone in {s['gone'] - s['sigterm']:.1f} s"
            + (" (SIGKILL)" if s["killed"] else f" (exit {s['exit_code']})")
            + unconsumed(s)
            for s in p["steps"]
            if s["old"] and s["gone"] is not None
        )
        figure = phase_figure(window, p)
        print(f"{p['name']:<18}{p['peak']:>6}{figure:>8}{window['allocation']:>8}   {olds}")
    ran = {"one_service": any(p["name"] not in ("initial", "all") for p in result["phases"]),
           "all_services": any(p["name"] == "all" for p in result["phases"])}  # fmt: skip
    for label, key in (("one service at a time", "one_service"), ("all at once", "all_services")):
        if not ran[key]:
            continue
        print(
            f"{label}: peak {summary[key + '_peak']} <= deploy.{key}.worst_case {window[key]}: "
            f"{summary[key + '_peak'] <= window[key]}; <= allocation {window['allocation']}: "
            f"{window[key] <= window['allocation']}"
        )
    total_reads = sum(n for s, n in summary["wrk"].items() if s)
    print(
        f"reads (wrk through HAProxy): {total_reads} answered, "
        f"statuses {dict(sorted(summary['wrk'].items()))} (0 = socket errors); "
        f"failed {summary['wrk_failed']}, 5xx {summary['wrk_5xx']}"
    )
    for c in summary["failed_chunks"]:
        print(
            f"  failures in the chunk {c['start']:.1f}-{c['end']:.1f} s: {c['statuses']}"
            + (f", socket errors {c['socket_errors']}" if c["socket_errors"] else "")
        )
    print(
        f"POSTs: {len(result['posts'])} attempts, statuses {dict(sorted(summary['posts'].items()))}; "
        f"failed attempts {summary['post_failed_attempts']}, 5xx {summary['post_5xx']}"
    )
    for p in result["posts"]:
        if failed(p["status"]):
            print(f"  POST at {p['t']:.1f} s, attempt {p['attempt']}: {p['status']} {p['detail']}")
    r = result["roadmaps"]
    print(
        f"roadmaps: accepted {r['accepted']}, completed exactly once {r['completed_exactly_once']} "
        f"(statuses {r['statuses']}); concepts {r['concepts']}: written once {r['concepts_written_once']}, "
        f"twice or more {r['concepts_written_twice_or_more']}, never {r['concepts_never_written']}; "
        f"duplicate positions {r['duplicate_positions']}"
    )
    if result["unexpected_exits"]:
        print(f"exited on their own: {result['unexpected_exits']}")
    if summary["killed"]:
        print(f"SIGKILLed after drainingSeconds: {summary['killed']}")
    edge = result["edge"]
    print(
        f"edge (HAProxy): {edge['redispatched']} requests retried on the other server; "
        f"{len(edge['failed'])} answered with an error or cut"
    )
    for line in edge["failed"][:30]:
        print(f"  {line}")
    print(
        "verdict: "
        + ("OK" if summary["ok"] else "NOT OK" + (f" (over: {summary['over']})" if summary["over"] else ""))
    )


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = result["window"]
    points = result["timeline"]
    fig, (top, lanes, bottom) = plt.subplots(
        3, 1, figsize=(13, 10), sharex=True, gridspec_kw={"height_ratios": [3.2, 1.3, 1.2]}
    )
    t = [p["t"] for p in points]
    top.plot(t, [p["total"] for p in points], color="black", linewidth=1.8, label="environment total")
    for service in SERVICES:
        top.plot(t, [p[service] for p in points], linewidth=1, label=service)
    top.axhline(window["allocation"], color="red", linewidth=1, label=f"allocation {window['allocation']}")
    top.axhline(
        window["steady"], color="grey", linestyle=":", linewidth=1, label=f"steady {window['steady']}"
    )
    labelled = set()
    for p in result["phases"]:
        if p["name"] == "initial":
            continue
        kind = "all at once" if p["name"] == "all" else "one service redeploying"
        color = "tab:purple" if p["name"] == "all" else "tab:orange"
        figure = phase_figure(window, p)
        top.hlines(figure, p["start"], p["end"], colors=color, linestyles="--", linewidth=1.5,
                   label=None if kind in labelled else f"budget, {kind}")  # fmt: skip
        labelled.add(kind)
        top.annotate(f"{p['peak']} / {figure}", (p["start"], figure), xytext=(0, 4),
                     textcoords="offset points", fontsize=7, color=color)  # fmt: skip
    top.set_ylabel("server connections (pg_stat_activity)")
    highest = max([window["all_services"], window["one_service"], *(p["total"] for p in points)])
    ceiling = max(highest * 1.35, 10)
    if window["allocation"] > ceiling:  # the allocation would flatten everything else
        top.text(0.995, 0.97, f"allocation {window['allocation']}: above the scale", transform=top.transAxes,
                 ha="right", va="top", fontsize=8, color="red")  # fmt: skip
    else:
        ceiling = window["allocation"] * 1.1
    top.set_ylim(0, ceiling)
    top.legend(loc="upper left", fontsize=7, ncol=4)
    top.set_title(textwrap.fill(title, 140), fontsize=9)

    # One lane per service: the new deployment starting (upper half); the old one beside it, then
    # draining after its SIGTERM (lower half).
    rows = {service: i for i, service in enumerate(SERVICES)}
    colors = {"preDeploy": "lightgrey", "new set starting": "tab:blue", "overlap": "tab:green",
              "old set draining": "tab:red"}  # fmt: skip
    for p in result["phases"]:
        lanes.axvline(p["start"], color="black", linewidth=0.5)
        lanes.text(p["start"], -1.15, f" {p['name']}", fontsize=8, va="top")
        for step in p["steps"]:
            y = rows[step["service"]]
            bars = [("preDeploy", p["start"], step["started"])]
            live = step["live"] if step["live"] is not None else step["started"]
            bars.append(("new set starting", step["started"], step["ready"] or live))
            if step["old"]:
                bars.append(("overlap", live, step["sigterm"]))
                bars.append(("old set draining", step["sigterm"], step["gone"]))
            for name, a, b in bars:
                # the new deployment in the upper half of its lane, the old one in the lower half
                top_half = name in ("preDeploy", "new set starting")
                if a is not None and b is not None and b > a:
                    lanes.broken_barh([(a, b - a)], (y - 0.4 if top_half else y + 0.02, 0.38),
                                      color=colors[name], alpha=0.8)  # fmt: skip
    lanes.set_yticks(range(len(SERVICES)), SERVICES, fontsize=8)
    lanes.set_ylim(len(SERVICES) + 0.6, -1.2)  # top to bottom: phase names, lanes, the legend's row
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.8) for c in colors.values()]
    lanes.legend(handles, list(colors), loc="lower right", fontsize=7, ncol=4)

    chunks = result["chunks"]
    mid = [(c["start"] + c["end"]) / 2 for c in chunks]
    span = [max(1e-9, c["end"] - c["start"]) for c in chunks]
    answered = [sum(n for s, n in c["statuses"].items() if int(s)) for c in chunks]
    bottom.plot(mid, [n / d for n, d in zip(answered, span, strict=True)], color="tab:blue", marker=".",
                label="reads answered / s (wrk)")  # fmt: skip
    bottom.set_ylabel("reads / s")
    bottom.set_ylim(bottom=0)
    right = bottom.twinx()
    failures = [sum(n for s, n in c["statuses"].items() if failed(int(s))) for c in chunks]
    right.bar(mid, failures, width=span, color="red", alpha=0.5, label="failed reads per wrk run")
    post_fail = [p["t"] for p in result["posts"] if failed(p["status"])]
    right.plot(post_fail, [0.5] * len(post_fail), "kx", label="failed POST attempt")
    right.set_ylabel("failures")
    right.set_ylim(0, max([*failures, 1]) * 1.3)
    h1, l1 = bottom.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    bottom.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=7, ncol=3)
    bottom.set_xlabel("seconds since the first deploy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finish(result: dict[str, Any], args: argparse.Namespace) -> int:
    summary = summarise(result)
    report(result, summary)
    plot(result, args.png, result["title"])
    print(f"wrote {args.png}")
    if args.json:
        args.json.write_text(json.dumps({**result, "summary": summary}, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0 if summary["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--railway-file", type=Path, default=RAILWAY_FILE)
    parser.add_argument("--environment", default="development")
    parser.add_argument(
        "--overlap", type=float, help="overlapSeconds for every service (default: the graph's)"
    )
    parser.add_argument(
        "--drain", type=float, help="drainingSeconds for every service (default: the graph's)"
    )
    parser.add_argument("--services", nargs="+", choices=SERVICES, default=list(SERVICES),
                        help="services deployed one at a time, in this order")  # fmt: skip
    parser.add_argument("--no-all", dest="all", action="store_false", help="skip the all-at-once phase")
    parser.add_argument("--duration", choices=sorted(DURATIONS), default="full")
    parser.add_argument("--connections", type=int, default=8, help="wrk's concurrent connections")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another scaled-down setting (over the defaults)")  # fmt: skip
    parser.add_argument("--png", type=Path, default=PNG)
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    parser.add_argument("--keep-logs", type=Path, help="copy the services' and HAProxy's logs here")
    parser.add_argument("--replot", type=Path, metavar="JSON", help="report and plot a saved --json result")
    args = parser.parse_args()
    if args.replot:
        return finish(json.loads(args.replot.read_text()), args)
    ensure_wrk()  # fails early with how to install it

    SCALE_DOWN_ACTIVE.update(SCALE_DOWN)
    for pair in args.set:
        name, _, value = pair.partition("=")
        SCALE_DOWN_ACTIVE[name.strip()] = value.strip()

    pg = OwnPostgres(max_connections=400).start()
    redis = OwnRedis(persistent=True).start()
    folder = Path(tempfile.mkdtemp(prefix="rehearse-"))
    try:
        jwt = "rehearsal-" + uuid.uuid4().hex + "x" * 8
        # the database name is the environment's own (POSTGRES_DB of its profile): the audit's
        database = "roadmap_dev" if args.environment == "development" else "roadmap_prod"
        url = pg.create_database(database)
        # The environment's shared variables the graph references; the others left empty take their
        # defaults (CHECKPOINTER_DATABASE_URL: the main database; LLM_API_KEY: the offline provider).
        own = {"DATABASE_URL": url, "REDIS_URL": redis.url, "JWT_SECRET_KEY": jwt}
        shared = {name: own.get(name, "") for name in REFERENCED}
        graph = compile_graph(args.environment, args.railway_file)
        configs = services_from_graph(graph, shared, args.overlap, args.drain)
        # Nothing of this shell's settings leaks in: the graph's variables, then the rehearsal's.
        base_env = {
            **{k: v for k, v in os.environ.items() if k not in Settings.model_fields and k != "ENV_FILE"},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "ENVIRONMENT": args.environment,
            **HARNESS_VARIABLES,
        }
        for c in configs.values():
            check = f", healthcheck {c.healthcheck_path} within {c.healthcheck_timeout:g} s"
            print(
                f"graph {c.name}: start `{c.start_command}`, preDeploy {list(c.pre_deploy)}, numReplicas "
                f"{c.num_replicas} -> 1 here, overlapSeconds {c.overlap:g}, drainingSeconds {c.draining:g}"
                + (check if c.healthcheck_path else "")
            )
        shared_variables = {
            k: v
            for c in configs.values()
            for k, v in c.variables.items()
            if k not in ("SERVICE_TYPE", "PORT")
        }
        budget, command = budget_json({**base_env, **shared_variables}, SCALE_DOWN_ACTIVE)
        window = deploy_window(budget)
        print(f"scaled down: {' '.join(f'{k}={v}' for k, v in SCALE_DOWN_ACTIVE.items())}")
        print(f"budget of the scaled topology: {command}  (from backend/, in the services' environment)")
        rows = [
            f"{s['service']} {s['processes']} x {s['per_process']}"
            + (f" + {s['langgraph']}" if s["langgraph"] else "")
            + f" = {s['max_connections']}"
            for s in budget["services"]
        ]
        print(
            "  " + ", ".join(rows) + f"; admin reserve {budget['admin_reserve']}; "
            f"worst case {budget['worst_case']} / allocation {budget['allocation']}"
        )
        print(
            f"  deploy window: one service at a time {window['one_service']} ({window['one_service_name']}), "
            f"all at once {window['all_services']}  [{window['source']}]"
        )
        result = asyncio.run(play(args, configs, base_env, url, pg.admin_url, folder, window))
        windows = ", ".join(f"{c.name} {c.overlap:g} / {c.draining:g}" for c in configs.values())
        result["title"] = (
            f"deploy rehearsal ({args.environment}), scaled: "
            + ", ".join(f"{k}={v}" for k, v in SCALE_DOWN_ACTIVE.items() if not k.endswith("_REPLICAS"))
            + f", 1 replica each; overlap / draining seconds: {windows}"
        )
        return finish(result, args)
    finally:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in folder.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        for cleanup in (redis.stop, pg.stop):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001
                print(f"cleanup failed: {exc!r}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
