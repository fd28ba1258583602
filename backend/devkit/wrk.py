"""wrk, the C load generator the benchmarks drive (Debian package ``wrk``), and what it reports.

Each run also reports wrk's own CPU share (its CPU time over wall time x cores, from the children's
rusage), so a reader can see the generator was not the bottleneck, and, when told the server's URL,
the server's CPU time per request (its processes' CPU time over the requests answered): a cost that the
machine's speed and the scheduling of 2 cores among server, database and generator move far less
than they move requests per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import psutil


def ensure_wrk() -> str:
    """wrk's path; installed with apt-get when we are root and it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("[bench] installing wrk (Debian package)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")
    return found


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _share(cpu: float, wall: float) -> float:
    return cpu / (wall * (os.cpu_count() or 1))


def _server_processes(url: str) -> list[psutil.Process]:
    """The processes of the server started with ``--port`` of ``url``'s port: uvicorn's supervisor
    and its workers (the benchmarks' servers all take the port on their command line)."""
    port = str(urlsplit(url).port)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(a == "--port" and b == port for a, b in pairwise(cmdline)):
            return [proc, *proc.children(recursive=True)]
    raise RuntimeError(f"no process serves {url} with --port {port}")


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """The CPU time (user + system) ``processes`` have used so far; one that has exited counts 0."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


# --- one URL, wrk's own summary ----------------------------------------------------------------------


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    generator_cpu: float  # wrk's CPU time / (wall time x cores)
    server_cpu_us: float | None = None  # the server's CPU time per request answered, when measured


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(
    binary: str, url: str, seconds: float, connections: int, threads: int, headers: list[str],
    *, server_cpu: bool = False,
) -> Run:  # fmt: skip
    """One wrk run of ``url`` with ``headers``; with ``server_cpu``, the serving processes' CPU time
    per request too."""
    server = _server_processes(url) if server_cpu else []
    server_before = cpu_seconds(server)
    before = _children_cpu()
    started = time.monotonic()
    header_args = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", *header_args, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    wall = time.monotonic() - started
    cpu = _children_cpu() - before
    server_seconds = cpu_seconds(server) - server_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)) else 0
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    server_us = 1e6 * server_seconds / requests if server and requests else None
    return Run(rps, p50, p99, non_2xx, errors, _share(cpu, wall), server_us)


# --- random reads over several paths, counted per status ----------------------------------------------


@dataclass
class StageResult:
    concurrency: int
    requests: int
    seconds: float
    statuses: dict[int, int]  # 0: no HTTP answer at all
    p50_ms: float
    p95_ms: float
    p99_ms: float
    generator_cpu: float = 0.0  # wrk's CPU time / (wall time x cores)
    socket_errors: dict[str, int] = field(default_factory=dict)  # wrk's connect / read / write / timeout

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


# wrk's Lua: a random read per request (one of ``paths``), with the bearer token; per-status counts and
# latency percentiles printed at the end, since wrk itself only counts "non-2xx".
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


async def wrk_stage(
    base: str, concurrency: int, seconds: float, paths: list[str], token: str, folder: Path
) -> StageResult:
    """``seconds`` of random reads of ``paths`` under ``base`` from ``concurrency`` connections."""
    script = folder / f"stage-{concurrency}.lua"
    script.write_text(WRK_SCRIPT % {"token": token, "paths": ", ".join(f'"{p}"' for p in paths)})
    before = _children_cpu()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        ensure_wrk(), f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s",
        "-s", str(script), base,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = (await proc.communicate())[0].decode()
    elapsed = time.monotonic() - started
    cpu = _children_cpu() - before
    statuses = {int(s): int(n) for s, n in re.findall(r"^STATUS (\d+) (\d+)$", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"^ERRORS (\d+)$", out, re.M))
    if errors:
        statuses[0] = errors
    latency = re.search(r"^LATENCY (\d+) (\d+) (\d+)$", out, re.M)
    if latency is None:
        raise RuntimeError(f"wrk gave no summary:\n{out[-2000:]}")
    p50, p95, p99 = (int(v) / 1000 for v in latency.groups())  # microseconds -> ms
    requests = sum(n for s, n in statuses.items() if s)
    kinds = re.search(r"^SOCKET (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    counts = map(int, kinds.groups()) if kinds else ()
    socket_errors = {k: n for k, n in zip(("connect", "read", "write", "timeout"), counts, strict=False) if n}
    return StageResult(
        concurrency, requests, elapsed, statuses, p50, p95, p99, _share(cpu, elapsed), socket_errors
    )
