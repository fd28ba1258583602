"""What the tests, the benchmarks and the dev scripts share: servers of their own on loopback
(PostgreSQL, Redis, the API, the bare floor app), the local services of a checkout, the wrk driver,
a pg_stat_activity sampler, and the renderer of the Railway file.

Part of the backend distribution, beside ``app`` (backend/pyproject.toml), so the editable install
that scripts/lib/bootstrap.sh makes puts it on every path: ``python scripts/bench_x.py`` and pytest
import it as they import ``app``. The Docker image leaves it out (.dockerignore). It holds no copy of
the app's logic: URLs, masking, tokens and the topology come from ``app``.
"""
