#!/usr/bin/env python3
"""The production topology on one machine, under rising load, watched from the server side.

    python scripts/load_harness.py                      # full profile (a few minutes), JSON + PNG
    python scripts/load_harness.py --profile ci         # about a minute; exit 1 if a budget is exceeded
    python scripts/load_harness.py --compare            # + the guide's old pools, NullPool, no semaphore

What it does, all on loopback, every process it starts stopped at the end:

1. its own PostgreSQL (max_connections=400, like the managed instance) and Redis, on free ports;
2. the four services exactly as production starts them (backend/scripts/railway_entrypoint.sh) with
   the production defaults: API with 8 uvicorn workers, Celery at concurrency 8 / 10 / 6; offline LLM
   and search providers with simulated latency;
3. load in stages of rising concurrency, past saturation: reads (roadmap list and detail, with a
   bearer token) driven by wrk, a C load generator, whose own CPU share is reported so a reader can
   see it was not the bottleneck; and a bounded number of roadmap creations from this process, each
   of which runs the whole workflow and content generation;
4. pg_stat_activity sampled every 100 ms by application_name.

It reports peak server connections in total and per service against the budget (app.budget), pool
timeouts, 503s, latency p50/p95/p99 and throughput per stage, connection hold time p95 per service,
and roadmaps completed; writes JSON and a PNG plot. Exit status 1 when a service's peak exceeds its
budget or the total exceeds the allocation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from devkit.ports import free_port
from devkit.postgres import OwnPostgres
from devkit.redis_server import OwnRedis

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"
sys.path.insert(0, str(BACKEND))

from app import sizing as app_sizing  # noqa: E402
from app import topology as app_topology  # noqa: E402 - every service, declared once
from app.config.settings import Settings, settings_from_mapping  # noqa: E402

SERVICES = app_topology.NAMES
WORKER_SERVICES = tuple(s.name for s in app_topology.WORKERS)
JWT_SECRET = "load-harness-secret-" + "x" * 32


@dataclass(frozen=True)
class Profile:
    stages: tuple[int, ...]  # concurrent clients per stage
    stage_seconds: float
    roadmaps: int  # creations in all, spread over the stages
    concepts: int
    llm_latency: float
    settle_seconds: float  # after the load, waiting for roadmaps to finish


PROFILES = {
    "full": Profile((4, 16, 64, 160, 320), 20.0, 20, 30, 1.0, 120.0),
    "ci": Profile((4, 32, 128), 6.0, 6, 10, 0.2, 45.0),
    "compare": Profile((16, 64, 160), 10.0, 8, 30, 1.0, 60.0),
}

VARIANTS = {
    "this project": {},
    "guide's old pools (2 + 2, 30 s timeout)": {
        "DB_POOL_SIZE": "2",
        "DB_MAX_OVERFLOW": "2",
        # the API too: 2 + 2 as the guide had it, not the fixed-size pool of the same maximum
        "API_DB_POOL_SIZE": "2",
        "API_DB_MAX_OVERFLOW": "2",
        "DB_POOL_TIMEOUT": "30",
        # Nor did the guide's stack bound a request: its waits must be able to reach the 30 s.
        "REQUEST_TIMEOUT_SECONDS": "60",
    },
    "NullPool": {"DB_POOL_CLASS": "null"},
    "no concept semaphore": {"CONCEPT_CONCURRENCY_LIMIT": "200"},
}


@dataclass
class Topology:
    """The four services, started through the production entrypoint."""

    env: dict[str, str]
    api_port: int
    metrics_ports: dict[str, int]
    folder: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        for service in SERVICES:
            env = {
                **self.env,
                "SERVICE_TYPE": service,
                "PROMETHEUS_MULTIPROC_DIR": str(self.folder / f"prom-{service}"),
                "WORKER_METRICS_PORT": str(self.metrics_ports.get(service, 0)),
            }
            log = (self.folder / f"{service}.log").open("wb")
            self.procs[service] = subprocess.Popen(
                ["bash", str(BACKEND / "scripts" / "railway_entrypoint.sh")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while True:
            ready = self._api_ready() and all(
                " ready." in (self.folder / f"{s}.log").read_text(errors="replace") for s in WORKER_SERVICES
            )
            if ready:
                return
            for service, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.folder / f"{service}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{service} exited:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError("the topology did not start within 180 s")
            time.sleep(0.5)

    def _api_ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.api_port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Sampler(threading.Thread):
    """pg_stat_activity every ``interval`` (100 ms), grouped by application_name (its own connection, not
    counted)."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        conn = await asyncpg.connect(self.url, server_settings={"application_name": "harness.sampler"})
        try:
            while not self._halt.is_set():
                rows = await conn.fetch(
                    "SELECT application_name, count(*) AS n FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND application_name <> 'harness.sampler'"
                    " GROUP BY 1"
                )
                self.samples.append(
                    (time.monotonic() - self.t0, {r["application_name"]: r["n"] for r in rows})
                )
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def service_of(application_name: str) -> str | None:
    """production.celery_workflow.langgraph -> celery_workflow (the checkpointer counts for its service)."""
    parts = application_name.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "production" and parts[1] in SERVICES else None


@dataclass
class StageResult:
    concurrency: int
    requests: int
    seconds: float
    statuses: dict[int, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    generator_cpu: float = 0.0  # the load generator's CPU time / (wall time x cores)
    socket_errors: dict[str, int] = field(default_factory=dict)  # wrk's connect / read / write / timeout

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


# wrk's Lua: a random read per request (the roadmap list, or one of the roadmaps created so far), with
# the bearer token; per-status counts and latency percentiles printed at the end, since wrk itself only
# counts "non-2xx".
WRK_SCRIPT = """
wrk.headers["Authorization"] = "Bearer %(token)s"
local paths = {%(paths)s}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
function request() return wrk.format("GET", paths[math.random(#paths)]) end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end
  end
  for status, n in pairs(total) do io.write(string.format("STATUS %%d %%d\\n", status, n)) end
  local e = summary.errors
  io.write(string.format("ERRORS %%d\\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("SOCKET %%d %%d %%d %%d\\n", e.connect, e.read, e.write, e.timeout))
  io.write(string.format("LATENCY %%d %%d %%d\\n", latency:percentile(50), latency:percentile(95),
                         latency:percentile(99)))
end
"""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (scripts/test.sh installs it as root)")
    return found


async def wrk_stage(
    base: str, concurrency: int, seconds: float, paths: list[str], token: str, folder: Path
) -> StageResult:
    """One stage of reads under wrk, a C load generator that is not the bottleneck; its CPU share is
    measured from its own rusage."""
    script = folder / f"stage-{concurrency}.lua"
    script.write_text(WRK_SCRIPT % {"token": token, "paths": ", ".join(f'"{p}"' for p in paths)})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        wrk_binary(), f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s",
        "-s", str(script), base,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = (await proc.communicate())[0].decode()
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    statuses = {int(s): int(n) for s, n in re.findall(r"^STATUS (\d+) (\d+)$", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"^ERRORS (\d+)$", out, re.M))
    if errors:
        statuses[0] = errors  # no HTTP answer at all
    latency = re.search(r"^LATENCY (\d+) (\d+) (\d+)$", out, re.M)
    if latency is None:
        raise RuntimeError(f"wrk gave no summary:\n{out[-2000:]}")
    p50, p95, p99 = (int(v) / 1000 for v in latency.groups())  # microseconds -> ms
    requests = sum(n for s, n in statuses.items() if s)
    kinds = re.search(r"^SOCKET (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    counts = map(int, kinds.groups()) if kinds else ()
    socket_errors = {k: n for k, n in zip(("connect", "read", "write", "timeout"), counts, strict=False) if n}
    return StageResult(
        concurrency, requests, elapsed, statuses, p50, p95, p99, cpu / (elapsed * (os.cpu_count() or 1)),
        socket_errors,
    )  # fmt: skip


async def drive(
    base: str, profile: Profile, token: str, t0: float, folder: Path
) -> tuple[list[StageResult], list[str]]:
    """Rising stages of reads under wrk; during each, a bounded number of roadmap creations (each runs
    the whole workflow and content generation) from this process."""
    created: list[str] = []
    stages: list[StageResult] = []
    headers = {"Authorization": f"Bearer {token}"}
    creations_per_stage = max(1, profile.roadmaps // len(profile.stages))
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def create(n: int) -> dict[int, int]:
            statuses: dict[int, int] = {}
            for _ in range(n):
                try:
                    body = {"topic": f"Load test {uuid.uuid4().hex[:6]}", "concept_count": profile.concepts}
                    response = await http.post("/api/v1/roadmaps", headers=headers, json=body)
                    status = response.status_code
                    if status == 202:
                        created.append(response.json()["id"])
                except httpx.HTTPError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
            return statuses

        for concurrency in profile.stages:
            to_create = min(creations_per_stage, profile.roadmaps - len(created))
            paths = ["/api/v1/roadmaps?limit=20"] + [f"/api/v1/roadmaps/{rid}" for rid in created]
            stage, creations = await asyncio.gather(
                wrk_stage(base, concurrency, profile.stage_seconds, paths, token, folder), create(to_create)
            )
            for status, n in creations.items():
                stage.statuses[status] = stage.statuses.get(status, 0) + n
            stage.requests += sum(n for s, n in creations.items() if s)
            stages.append(stage)
            print(
                f"  stage {concurrency:>4} clients: {stage.throughput:8.1f} req/s  "
                f"p50 {stage.p50_ms:7.1f} ms  p95 {stage.p95_ms:7.1f} ms  p99 {stage.p99_ms:7.1f} ms  "
                f"statuses {stage.statuses}  wrk CPU {100 * stage.generator_cpu:.1f}%",
                flush=True,
            )
    return stages, created


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text -> {sample name: {sorted labels: value}}, with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def hold_p95(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, float]:
    """p95 of db_connection_hold_seconds per service, from the cumulative buckets."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for labels, value in metrics.get("db_connection_hold_seconds_bucket", {}).items():
        d = dict(labels)
        le = float("inf") if d["le"] == "+Inf" else float(d["le"])
        buckets.setdefault(d["service"], []).append((le, value))
    result = {}
    for service, points in buckets.items():
        points.sort()
        total = points[-1][1]
        if total:
            result[service] = next(le for le, count in points if count >= 0.95 * total)
    return result


def collect_metrics(api_port: int, metrics_ports: dict[str, int]) -> dict[str, Any]:
    merged: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    urls = [f"http://127.0.0.1:{api_port}/metrics"] + [
        f"http://127.0.0.1:{p}/metrics" for p in metrics_ports.values()
    ]
    for url in urls:
        try:
            text = httpx.get(url, timeout=10).text
        except httpx.HTTPError:
            continue
        for name, series in parse_metrics(text).items():
            merged.setdefault(name, {}).update(series)
    timeouts = {
        dict(k).get("service", "?"): v for k, v in merged.get("db_pool_connection_timeouts_total", {}).items()
    }
    return {"pool_timeouts": timeouts, "hold_p95_seconds": hold_p95(merged)}


async def completed_roadmaps(url: str, ids: list[str], wait: float) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + wait
        while True:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n FROM roadmaps WHERE id = ANY($1::uuid[]) GROUP BY 1", ids
            )
            counts = {r["status"]: r["n"] for r in rows}
            if (
                counts.get("completed", 0) + counts.get("failed", 0) >= len(ids)
                or time.monotonic() > deadline
            ):
                return counts
            await asyncio.sleep(1)
    finally:
        await conn.close()


async def seed_keys(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO tavily_api_keys (api_key, remaining_credits, status)"
            " VALUES ('load-key-1', 1000000, 'active'), ('load-key-2', 1000000, 'active')"
        )
    finally:
        await conn.close()


def run_once(profile: Profile, overrides: dict[str, str], label: str) -> dict[str, Any]:
    pg = OwnPostgres(max_connections=400).start()
    redis = OwnRedis().start()
    folder = Path(tempfile.mkdtemp(prefix="load-"))
    topology: Topology | None = None
    sampler: Sampler | None = None
    try:
        url = pg.create_database("roadmap")
        env = {
            # the production profile: none of this shell's settings leak into the topology
            **{k: v for k, v in os.environ.items() if k not in Settings.model_fields},
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "DATABASE_URL": url,
            "REDIS_URL": redis.url,
            "JWT_SECRET_KEY": JWT_SECRET,
            "LLM_PROVIDER": "offline",
            "LLM_OFFLINE_LATENCY": str(profile.llm_latency),
            "SEARCH_PROVIDER": "offline",
            "SEARCH_OFFLINE_USES_KEYS": "true",
            "SEARCH_OFFLINE_LATENCY": "0.05",
            "DB_BUDGET_ENFORCEMENT": "warn",
            "DB_LEAK_DETECTION_THRESHOLD": "30",
            # One synthetic user creates every roadmap of the run: the per-user quota would refuse it.
            "ROADMAP_CREATE_RATE_LIMIT": "100000/minute",
            "ROADMAP_MAX_IN_PROGRESS": "10000",
            **overrides,
        }
        subprocess.run(
            [sys.executable, "-m", "app.db.prestart"],
            cwd=BACKEND,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Tavily keys with plenty of credits, so the search router does its real work.
        asyncio.run(seed_keys(url))
        api_port = free_port()
        metrics_ports = {s: free_port() for s in WORKER_SERVICES}
        topology = Topology({**env, "PORT": str(api_port)}, api_port, metrics_ports, folder)
        plans = app_sizing.fleet(settings_from_mapping(env))
        print(
            f"[{label}] starting PostgreSQL :{pg.port}, Redis :{redis.port}, API :{api_port}; "
            + ", ".join(f"{p.name} {p.replicas} x {p.processes}" for p in plans),
            flush=True,
        )
        started = time.monotonic()
        topology.start()
        print(f"[{label}] topology up in {time.monotonic() - started:.1f} s", flush=True)

        os.environ["JWT_SECRET_KEY"] = JWT_SECRET
        from app.config.settings import get_settings, load_settings
        from app.core.security import create_token

        get_settings.cache_clear()
        token = create_token("load-harness", "user", settings=load_settings(), expires_minutes=120)

        sampler = Sampler(pg.admin_url)
        sampler.start()
        load_started = time.monotonic() - sampler.t0
        stages, created = asyncio.run(
            drive(f"http://127.0.0.1:{api_port}", profile, token, sampler.t0, folder)
        )
        load_ended = time.monotonic() - sampler.t0
        roadmaps = asyncio.run(completed_roadmaps(url, created, profile.settle_seconds))
        settled = time.monotonic() - sampler.t0
        metrics = collect_metrics(api_port, metrics_ports)
        sampler.stop()
        return report(
            env,
            label,
            profile,
            overrides,
            sampler,
            stages,
            created,
            roadmaps,
            metrics,
            (load_started, load_ended, settled),
        )
    finally:
        # Each step on its own: one failing must not leave the others' processes running.
        for cleanup in (
            sampler.stop if sampler is not None else None,
            topology.stop if topology is not None else None,
            redis.stop,
            pg.stop,
        ):
            if cleanup is None:
                continue
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001
                print(f"cleanup {cleanup.__qualname__} failed: {exc!r}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)


def report(
    services_env: dict[str, str],
    label: str,
    profile: Profile,
    overrides: dict[str, str],
    sampler: Sampler,
    stages: list[StageResult],
    created: list[str],
    roadmaps: dict[str, int],
    metrics: dict[str, Any],
    phases: tuple[float, float, float],
) -> dict[str, Any]:
    from app.budget.model import budget_from_settings

    # The budget of the services as they were started: their environment, not this process's.
    settings = settings_from_mapping(services_env)
    budget = budget_from_settings(settings)
    budgets = {s.name: s.max_connections for s in budget.services}
    peaks = dict.fromkeys(SERVICES, 0)
    total_peak = 0
    timeline = []
    for t, counts in sampler.samples:
        per: dict[str, int] = dict.fromkeys(SERVICES, 0)
        for name, n in counts.items():
            service = service_of(name)
            if service:
                per[service] += n
        total = sum(counts.values())
        total_peak = max(total_peak, total)
        for s in SERVICES:
            peaks[s] = max(peaks[s], per[s])
        timeline.append({"t": round(t, 2), "total": total, **per})
    over = {s: peaks[s] for s in SERVICES if peaks[s] > budgets[s]}
    result = {
        "label": label,
        "overrides": overrides,
        "profile": profile.__dict__,
        "allocation": budget.allocation,
        "budget_worst_case": budget.worst_case,
        "budgets": budgets,
        "peak_server_connections": {"total": total_peak, **peaks},
        "over_budget": over,
        "over_allocation": total_peak > budget.allocation,
        "stages": [{**s.__dict__, "throughput": round(s.throughput, 1)} for s in stages],
        "responses_503": sum(s.statuses.get(503, 0) for s in stages),
        "responses_5xx_other": sum(v for s in stages for k, v in s.statuses.items() if k >= 500 and k != 503),
        "transport_errors": sum(s.statuses.get(0, 0) for s in stages),
        "pool_timeouts": metrics["pool_timeouts"],
        "hold_p95_seconds": metrics["hold_p95_seconds"],
        "roadmaps": {"created": len(created), **roadmaps},
        "phases": {"load_start": phases[0], "load_end": phases[1], "settled": phases[2]},
        "timeline": timeline,
    }
    print(
        f"[{label}] peak server connections: total {total_peak} / allocation {budget.allocation}; "
        + ", ".join(f"{s} {peaks[s]}/{budgets[s]}" for s in SERVICES),
        flush=True,
    )
    print(
        f"[{label}] 503s {result['responses_503']}, other 5xx {result['responses_5xx_other']}, "
        f"transport errors {result['transport_errors']}, pool timeouts {metrics['pool_timeouts']}, "
        f"hold p95 {metrics['hold_p95_seconds']}, roadmaps {result['roadmaps']}",
        flush=True,
    )
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 9))
    t = [p["t"] for p in result["timeline"]]
    for service in SERVICES:
        top.plot(t, [p[service] for p in result["timeline"]], label=service)
    top.plot(t, [p["total"] for p in result["timeline"]], label="total", color="black", linewidth=2)
    top.axhline(
        result["allocation"], color="red", linestyle="--", label=f"allocation ({result['allocation']})"
    )
    top.axvspan(
        result["phases"]["load_start"], result["phases"]["load_end"], color="grey", alpha=0.1, label="load"
    )
    top.set_xlabel("seconds")
    top.set_ylabel("server connections (pg_stat_activity)")
    top.set_title(f"{result['label']}: connections per service")
    top.legend(loc="upper right", fontsize=8)
    stages = result["stages"]
    x = [s["concurrency"] for s in stages]
    bottom.plot(
        x, [s["throughput"] for s in stages], marker="o", color="tab:blue", label="throughput (req/s)"
    )
    bottom.set_xscale("log", base=2)
    bottom.set_xlabel("concurrent clients")
    bottom.set_ylabel("requests / s", color="tab:blue")
    right = bottom.twinx()
    for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
        right.plot(x, [s[key] for s in stages], linestyle=style, color="tab:orange", marker=".", label=key)
    right.set_ylabel("latency (ms)", color="tab:orange")
    right.legend(loc="upper left", fontsize=8)
    bottom.set_title("throughput and latency against load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--profile", choices=["full", "ci"], default="full")
    parser.add_argument("--compare", action="store_true", help="also run the comparison variants")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_once(PROFILES[args.profile], {}, f"production topology ({args.profile})")
    (args.out / f"load-{args.profile}.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / f"load-{args.profile}.png")
    print(f"wrote {args.out / f'load-{args.profile}.json'} and .png")
    if args.compare:
        rows = []
        for label, overrides in VARIANTS.items():
            r = run_once(PROFILES["compare"], overrides, label)
            rows.append(r)
        (args.out / "load-compare.json").write_text(json.dumps(rows, indent=1))
        base = rows[0]
        print(
            "\ncomparison (same load: stages 16/64/160 clients x 10 s, "
            "8 roadmaps of 30 concepts at 1 s LLM latency)"
        )
        print(
            f"{'variant':<42}{'req/s (max)':>12}{'p95 ms (160)':>13}{'503s':>7}"
            f"{'peak conns':>11}{'roadmaps done':>15}"
        )
        for r in rows:
            best = max(s["throughput"] for s in r["stages"])
            print(
                f"{r['label']:<42}{best:>12.1f}{r['stages'][-1]['p95_ms']:>13.1f}{r['responses_503']:>7}"
                f"{r['peak_server_connections']['total']:>11}{r['roadmaps'].get('completed', 0):>15}"
            )
        best_base = max(s["throughput"] for s in base["stages"])
        for r in rows[1:]:
            best = max(s["throughput"] for s in r["stages"])
            print(f"throughput ratio this project / {r['label']}: {best_base / best:.2f}")
    ok = not result["over_budget"] and not result["over_allocation"] and not result["responses_5xx_other"]
    if not ok:
        print(
            f"FAIL: over budget {result['over_budget']}, over allocation {result['over_allocation']}, "
            f"other 5xx {result['responses_5xx_other']}",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
