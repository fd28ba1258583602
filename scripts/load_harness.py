#!/usr/bin/env python3
"""The production topology on one machine, under rising load, watched from the server side.

    python scripts/load_harness.py                      # full profile (a few minutes), JSON + PNG
    python scripts/load_harness.py --profile ci         # about a minute; exit 1 if a budget is exceeded
    python scripts/load_harness.py --compare            # + the guide's old pools, NullPool, no semaphore

What it does, all on loopback, every process it starts stopped at the end:

1. its own PostgreSQL (max_connections=400, like the managed instance) and Redis, on free ports;
2. every service of app.topology exactly as production starts them (backend/scripts/railway_entrypoint.sh),
   sized by their plans (app.sizing) under the production profile: API with 8 uvicorn workers, Celery at
   concurrency 8 / 10 / 6; offline LLM and search providers with simulated latency;
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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app import topology
from app.budget.model import budget_from_settings
from app.config import connections as app_connections
from app.config.settings import Settings
from app.sizing import ServicePlan
from devkit.api import BACKEND
from devkit.bench import bench_token
from devkit.pg_activity import Sampler
from devkit.ports import free_port
from devkit.postgres import OwnPostgres
from devkit.redis_server import OwnRedis
from devkit.wrk import StageResult, wrk_stage

ROOT = BACKEND.parent
SERVICES = topology.NAMES
JWT_SECRET = "load-harness-secret-" + "x" * 32


@dataclass(frozen=True)
class Load:
    """The load of one run (the services' settings are the production profile's, plus ``VARIANTS``)."""

    stages: tuple[int, ...]  # concurrent clients per stage
    stage_seconds: float
    roadmaps: int  # creations in all, spread over the stages
    concepts: int
    llm_latency: float
    settle_seconds: float  # after the load, waiting for roadmaps to finish


LOADS = {
    "full": Load((4, 16, 64, 160, 320), 20.0, 20, 30, 1.0, 120.0),
    "ci": Load((4, 32, 128), 6.0, 6, 10, 0.2, 45.0),
    "compare": Load((16, 64, 160), 10.0, 8, 30, 1.0, 60.0),
}

API = topology.service("api")
VARIANTS = {
    "this project": {},
    "guide's old pools (2 + 2, 30 s timeout)": {
        "DB_POOL_SIZE": "2",
        "DB_MAX_OVERFLOW": "2",
        # the API too: 2 + 2 as the guide had it, not the fixed-size pool of the same maximum
        API.pool_size_var: "2",
        API.max_overflow_var: "2",
        "DB_POOL_TIMEOUT": "30",
        # Nor did the guide's stack bound a request: its waits must be able to reach the 30 s.
        "REQUEST_TIMEOUT_SECONDS": "60",
    },
    "NullPool": {"DB_POOL_CLASS": "null"},
    "no concept semaphore": {"CONCEPT_CONCURRENCY_LIMIT": "200"},
}


def start_services(
    plans: list[ServicePlan], env: dict[str, str], metrics_ports: dict[str, int], folder: Path
) -> dict[str, subprocess.Popen[bytes]]:
    """Each service through the production entrypoint; returns once the API answers and every worker
    consumes (its `` ready.`` line)."""
    procs = {}
    for plan in plans:
        name = plan.name
        log = (folder / f"{name}.log").open("wb")
        procs[name] = subprocess.Popen(
            ["bash", str(BACKEND / "scripts" / "railway_entrypoint.sh")],
            env={**env, "SERVICE_TYPE": name, "PROMETHEUS_MULTIPROC_DIR": str(folder / f"prom-{name}"),
                 "WORKER_METRICS_PORT": str(metrics_ports.get(name, 0))},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def up(plan: ServicePlan) -> bool:
        if plan.service.is_worker:
            return " ready." in (folder / f"{plan.name}.log").read_text(errors="replace")
        try:
            return httpx.get(f"http://127.0.0.1:{env['PORT']}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    deadline = time.monotonic() + 180
    while not all(up(plan) for plan in plans):
        for name, proc in procs.items():
            if proc.poll() is not None:
                tail = (folder / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError("the topology did not start within 180 s")
        time.sleep(0.5)
    return procs


def stop_services(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def service_of(settings: Settings, application_name: str) -> str | None:
    """The service whose connection this is: ``<environment>.<service>`` or below it (its checkpointer's)."""
    for name in SERVICES:
        own = app_connections.application_name(settings, name)
        if application_name == own or application_name.startswith(own + "."):
            return name
    return None


async def drive(base: str, load: Load, token: str, folder: Path) -> tuple[list[StageResult], list[str]]:
    """Rising stages of reads under wrk; during each, a bounded number of roadmap creations (each runs
    the whole workflow and content generation) from this process."""
    created: list[str] = []
    stages: list[StageResult] = []
    headers = {"Authorization": f"Bearer {token}"}
    creations_per_stage = max(1, load.roadmaps // len(load.stages))
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def create(n: int) -> dict[int, int]:
            statuses: dict[int, int] = {}
            for _ in range(n):
                try:
                    body = {"topic": f"Load test {uuid.uuid4().hex[:6]}", "concept_count": load.concepts}
                    response = await http.post("/api/v1/roadmaps", headers=headers, json=body)
                    status = response.status_code
                    if status == 202:
                        created.append(response.json()["id"])
                except httpx.HTTPError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
            return statuses

        for concurrency in load.stages:
            to_create = min(creations_per_stage, load.roadmaps - len(created))
            paths = ["/api/v1/roadmaps?limit=20"] + [f"/api/v1/roadmaps/{rid}" for rid in created]
            stage, creations = await asyncio.gather(
                wrk_stage(base, concurrency, load.stage_seconds, paths, token, folder), create(to_create)
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


def run_once(load: Load, overrides: dict[str, str], label: str) -> dict[str, Any]:
    pg = OwnPostgres(max_connections=400).start()
    redis = OwnRedis().start()
    folder = Path(tempfile.mkdtemp(prefix="load-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    sampler: Sampler | None = None
    try:
        url = pg.create_database("roadmap")
        api_port = free_port()
        env = {
            # the production profile: none of this shell's settings leak into the topology
            **{k: v for k, v in os.environ.items() if k not in Settings.model_fields},
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "DATABASE_URL": url,
            "REDIS_URL": redis.url,
            "JWT_SECRET_KEY": JWT_SECRET,
            "PORT": str(api_port),
            "LLM_PROVIDER": "offline",
            "LLM_OFFLINE_LATENCY": str(load.llm_latency),
            "SEARCH_PROVIDER": "offline",
            "SEARCH_OFFLINE_USES_KEYS": "true",
            "SEARCH_OFFLINE_LATENCY": "0.05",
            "DB_BUDGET_ENFORCEMENT": "warn",
            "DB_LEAK_DETECTION_THRESHOLD": "30",
            # One synthetic user creates every roadmap of the run: the per-user quota would refuse it.
            "ROADMAP_CREATE_RATE_LIMIT": "100000/minute",
            "ROADMAP_MAX_IN_PROGRESS": "10000",
            # wrk retries a shed request at once: admission control would turn its stages into a retry
            # storm and this run into a measure of that (bench_overload.py measures admission).
            "API_ADMISSION": "off",
            **overrides,
        }
        subprocess.run([sys.executable, "-m", "app.db.prestart"], cwd=BACKEND, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        # Tavily keys with plenty of credits, so the search router does its real work.
        asyncio.run(seed_keys(url))
        # The services as they are started: their environment, not this process's.
        settings = Settings.from_mapping(env)
        budget = budget_from_settings(settings)
        metrics_ports = {s.name: free_port() for s in topology.WORKERS}
        print(
            f"[{label}] starting PostgreSQL :{pg.port}, Redis :{redis.port}, API :{api_port}; "
            + ", ".join(f"{p.name} {p.replicas} x {p.processes}" for p in budget.services),
            flush=True,
        )
        started = time.monotonic()
        procs = start_services(budget.services, env, metrics_ports, folder)
        print(f"[{label}] topology up in {time.monotonic() - started:.1f} s", flush=True)
        token = bench_token("load-harness", "user", secret=JWT_SECRET, expires_minutes=120)

        sampler = Sampler(pg.admin_url)
        sampler.start()
        load_started = time.monotonic() - sampler.t0
        stages, created = asyncio.run(drive(f"http://127.0.0.1:{api_port}", load, token, folder))
        load_ended = time.monotonic() - sampler.t0
        roadmaps = asyncio.run(completed_roadmaps(url, created, load.settle_seconds))
        settled = time.monotonic() - sampler.t0
        metrics = collect_metrics(api_port, metrics_ports)
        sampler.stop()
        budgets = {s.name: s.max_connections for s in budget.services}
        peak, timeline = connections(settings, sampler)
        result = {
            "label": label,
            "overrides": overrides,
            "profile": load.__dict__,
            "allocation": budget.allocation,
            "budget_worst_case": budget.worst_case,
            "budgets": budgets,
            "peak_server_connections": peak,
            "over_budget": {s: peak[s] for s in SERVICES if peak[s] > budgets[s]},
            "over_allocation": peak["total"] > budget.allocation,
            "stages": [{**s.__dict__, "throughput": round(s.throughput, 1)} for s in stages],
            "responses_503": sum(s.statuses.get(503, 0) for s in stages),
            "responses_5xx_other": sum(
                v for s in stages for k, v in s.statuses.items() if k >= 500 and k != 503
            ),
            "transport_errors": sum(s.statuses.get(0, 0) for s in stages),
            "pool_timeouts": metrics["pool_timeouts"],
            "hold_p95_seconds": metrics["hold_p95_seconds"],
            "roadmaps": {"created": len(created), **roadmaps},
            "phases": {"load_start": load_started, "load_end": load_ended, "settled": settled},
            "timeline": timeline,
        }
        report(result)
        return result
    finally:
        # Each step on its own: one failing must not leave the others' processes running.
        for cleanup in (sampler.stop if sampler else None, lambda: stop_services(procs), redis.stop, pg.stop):
            try:
                if cleanup is not None:
                    cleanup()
            except Exception as exc:  # noqa: BLE001
                print(f"cleanup failed: {exc!r}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)


def connections(settings: Settings, sampler: Sampler) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Peak server connections in total and per service, and the timeline they come from."""
    peak = dict.fromkeys(["total", *SERVICES], 0)
    timeline = []
    for t, counts in sampler.samples:
        point = {"t": round(t, 2), "total": sum(counts.values()), **dict.fromkeys(SERVICES, 0)}
        for name, n in counts.items():
            service = service_of(settings, name)
            if service:
                point[service] += n
        peak = {k: max(v, point[k]) for k, v in peak.items()}
        timeline.append(point)
    return peak, timeline


def report(result: dict[str, Any]) -> None:
    label, peak, budgets = result["label"], result["peak_server_connections"], result["budgets"]
    print(
        f"[{label}] peak server connections: total {peak['total']} / allocation {result['allocation']}; "
        + ", ".join(f"{s} {peak[s]}/{budgets[s]}" for s in SERVICES),
        flush=True,
    )
    print(
        f"[{label}] 503s {result['responses_503']}, other 5xx {result['responses_5xx_other']}, "
        f"transport errors {result['transport_errors']}, pool timeouts {result['pool_timeouts']}, "
        f"hold p95 {result['hold_p95_seconds']}, roadmaps {result['roadmaps']}",
        flush=True,
    )


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
    result = run_once(LOADS[args.profile], {}, f"production topology ({args.profile})")
    (args.out / f"load-{args.profile}.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / f"load-{args.profile}.png")
    print(f"wrote {args.out / f'load-{args.profile}.json'} and .png")
    if args.compare:
        rows = []
        for label, overrides in VARIANTS.items():
            r = run_once(LOADS["compare"], overrides, label)
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
