"""The one Settings class: every knob of the service, with the production values as defaults.

Connection allocation (one managed PostgreSQL server shared by the environments):

* each environment gets its share of the server's ``max_connections`` (``DB_CONNECTION_BUDGET``; the
  guide splits 400 as production 280, development 120);
* each process holds at most ``pool_size + max_overflow`` SQLAlchemy connections: the shared
  ``DB_POOL_SIZE`` / ``DB_MAX_OVERFLOW`` unless its service sets its own (``API_DB_POOL_SIZE``, ...);
* the LangGraph checkpointer has its own psycopg pool per workflow process (``LANGGRAPH_POOL_MAX_SIZE``);
* ``DB_ADMIN_RESERVE`` connections stay free for psql and monitoring.

Environment profiles: the defaults below are production's. ``ENVIRONMENT=development`` alone selects
the development profile (``PROFILES``: the guide's development column); a variable set explicitly, in
the environment or an env file, always wins over its profile. Nothing else in the code asks which
environment it is in.

Each service's variables (process count, replicas, per-service pool, time limit) are declared by name
in ``app.config.services``, named as ``app.topology`` says (a test keeps the two equal).

Invalid values stop start-up with one line naming the variable (``InvalidSettingsError``), and every
password, key or DSN is a ``SecretStr`` so that no repr, log line or response can show it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from app import topology
from app.config.loading import LoadableSettings
from app.config.services import ServiceSettings
from app.config.urls import redis_cert_reqs

Environment = Literal["development", "production", "test"]
ServiceType = Literal[topology.NAMES]  # type: ignore[valid-type]
LogFormat = Literal["json", "console"]

# The guide's development column. Production's values are the field defaults; "test" uses them too.
# POSTGRES_DB is here because the audit charges an environment only with its own database.
PROFILES: dict[str, dict[str, object]] = {
    "production": {},
    "development": {
        "POSTGRES_DB": "roadmap_dev",
        "DB_POOL_SIZE": 4,
        "DB_MAX_OVERFLOW": 3,
        "DB_CONNECTION_BUDGET": 120,
        "DB_ADMIN_RESERVE": 10,
        "LANGGRAPH_POOL_MAX_SIZE": 10,
        # A finished roadmap's checkpoints stay a day, to look at what its graph did while debugging.
        "CHECKPOINT_RETENTION_SECONDS": 86_400,
        **{s.processes_var: s.processes["development"] for s in topology.SERVICES},
    },
}


class Settings(ServiceSettings, LoadableSettings):
    """Every knob of the service (``app.config.services`` declares each service's own)."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        extra="ignore",
        env_file_encoding="utf-8",
        validate_default=True,
    )

    # --- deployment -------------------------------------------------------------------------------
    ENVIRONMENT: Environment = "production"
    DEBUG: bool = False
    SERVICE_TYPE: ServiceType = "api"
    PROJECT_NAME: str = "roadmap-backend"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # JSON lines for log shippers in production; the development env file switches to console.
    LOG_FORMAT: LogFormat = "json"
    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- PostgreSQL -------------------------------------------------------------------------------
    POSTGRES_HOST: str = "localhost"
    POSTGRES_PORT: int = Field(5432, ge=1, le=65535)
    POSTGRES_USER: str = "postgres"
    POSTGRES_PASSWORD: SecretStr = SecretStr("")
    POSTGRES_DB: str = "roadmap_prod"
    # A whole URL wins over the POSTGRES_* parts (Railway and most PaaS hand out one URL).
    DATABASE_URL: SecretStr | None = None
    # Defaults to the main database; a separate one keeps checkpoint churn off the app's server.
    CHECKPOINTER_DATABASE_URL: SecretStr | None = None

    # --- SQLAlchemy pool, per process ---------------------------------------------------------------
    # The shared sizing, pool_size + max_overflow per process: a service's <PREFIX>_DB_POOL_SIZE /
    # <PREFIX>_DB_MAX_OVERFLOW, when set, wins for that service's processes.
    DB_POOL_SIZE: int = Field(6, ge=1, le=200)
    DB_MAX_OVERFLOW: int = Field(4, ge=0, le=200)
    # Fail fast: SQLAlchemy's default of 30 s (60 s behind a proxy) is what made requests hang.
    DB_POOL_TIMEOUT: float = Field(5.0, gt=0, le=120)
    # Recycle before a managed server or a NAT drops an idle connection (often at 30-60 min).
    DB_POOL_RECYCLE: int = Field(1800, ge=-1)
    # Validate a pooled connection before handing it out, if it has been idle longer than
    # DB_POOL_PING_IDLE_SECONDS (HikariCP's aliveBypassWindowMs is 500 ms; 0 pings every checkout).
    # One round trip, and only where a connection may have died unnoticed (app.db.liveness).
    DB_POOL_PRE_PING: bool = True
    DB_POOL_PING_IDLE_SECONDS: float = Field(0.5, ge=0, le=3600)
    DB_CONNECT_TIMEOUT: float = Field(5.0, gt=0, le=120)
    # Deadlines on every statement, so that a stalled server or network never holds a request, a task
    # or a pooled connection without bound (app.db.engine, app.core.orchestrator_factory):
    # the server cancels a statement running longer than this (statement_timeout, a clean error on a
    # usable connection), and the client gives up DB_COMMAND_TIMEOUT_MARGIN later when no answer came at
    # all (asyncpg's command_timeout; the checkpointer's own deadline), discarding that connection.
    DB_STATEMENT_TIMEOUT: float = Field(10.0, gt=0, le=3600)
    DB_COMMAND_TIMEOUT_MARGIN: float = Field(1.0, gt=0, le=60)
    # The server ends a session left idle inside a transaction this long (a client stuck or gone
    # mid-transaction would otherwise hold its row locks and its connection slot forever). 0: off.
    DB_IDLE_IN_TRANSACTION_TIMEOUT: float = Field(60.0, ge=0, le=86400)
    # The server probes a silent client's socket after this many idle seconds (then every
    # TCP_KEEPALIVES_INTERVAL seconds, TCP_KEEPALIVES_COUNT times): the connections of a host that
    # vanished leave pg_stat_activity and the budget that much later, not after the kernel's two hours.
    # The client side probes the same way (libpq keepalives for psycopg; asyncpg has none, its
    # command_timeout and the idle ping cover it).
    DB_TCP_KEEPALIVES_IDLE: int = Field(30, ge=1, le=7200)
    # Pool instrumentation (events -> Prometheus, usage logs); off only to measure its cost.
    DB_POOL_METRICS_ENABLED: bool = True
    DB_POOL_HIGH_USAGE_RATIO: float = Field(0.7, gt=0, le=1)
    DB_POOL_CRITICAL_USAGE_RATIO: float = Field(0.9, gt=0, le=1)
    # At most one usage log line per level per process in this many seconds.
    DB_POOL_USAGE_LOG_INTERVAL: float = Field(10.0, ge=0)
    # Like HikariCP's leakDetectionThreshold: a connection checked out longer than this logs
    # db_connection_leak_suspected with where it was checked out (0 turns it off).
    DB_LEAK_DETECTION_THRESHOLD: float = Field(30.0, ge=0)
    # queue: the sized, instrumented pool. null: no pooling (a connection per checkout), only to
    # measure what pooling is worth (scripts/load_harness.py --compare).
    DB_POOL_CLASS: Literal["queue", "null"] = "queue"

    # --- connection allocation (of the server's max_connections) ------------------------------------
    # This environment's share of the server (the guide: 280 of 400 for production).
    DB_CONNECTION_BUDGET: int = Field(280, ge=1)
    # Left free for psql and monitoring.
    DB_ADMIN_RESERVE: int = Field(20, ge=0)
    # The guide's "estimated real peak" as a share of the theoretical maximum (app.budget shows both).
    DB_BUDGET_PEAK_FACTOR: float = Field(0.6, gt=0, le=1)
    # What a service does at start when the worst case exceeds DB_CONNECTION_BUDGET or what the server
    # accepts (max_connections - superuser_reserved_connections): off (nothing), warn (one log line),
    # strict (refuse to start, naming the variables to change).
    DB_BUDGET_ENFORCEMENT: Literal["off", "warn", "strict"] = "warn"
    # The deploy window the budget plans for (app.topology.DeployCase): a rolling deploy runs a
    # service's old and new deployments side by side, so its pools count twice while it redeploys.
    DB_BUDGET_DEPLOY_CASE: topology.DeployCase = "one_service"
    # Nothing above stops another environment on the same server from taking this one's connections:
    # the prestart step (and python -m app.budget --apply-cap) sets DB_CONNECTION_BUDGET -
    # DB_ADMIN_RESERVE as the server's CONNECTION LIMIT of this database (database), and of the app's
    # role too (database_and_role: only where each environment has a role of its own). off: nothing.
    DB_CONNECTION_CAP: Literal["off", "database", "database_and_role"] = "off"
    # Set by railway_entrypoint.sh once it has run the guard for this service start, so the processes
    # it starts (every uvicorn worker, a worker's parent) do not check again.
    DB_BUDGET_CHECKED: bool = False
    # /metrics runs the pg_stat_activity audit (one short query) so alerts see the server's own count.
    DB_AUDIT_ON_SCRAPE: bool = True

    # --- Celery --------------------------------------------------------------------------------------
    # Process counts, replicas and time limits are per service: app.config.services.
    # Task events wait in Redis and are written to task_logs this many rows per connection.
    TASK_LOG_BATCH_SIZE: int = Field(500, ge=1, le=10_000)
    # At most one flush task is queued per this many seconds, however many events arrive.
    TASK_LOG_FLUSH_INTERVAL: float = Field(1.0, gt=0, le=300)
    # Prefixes every Redis key (Celery's and ours) so several stacks can share one Redis.
    REDIS_KEY_PREFIX: str = ""

    # --- LangGraph checkpointer pool (psycopg AsyncConnectionPool), per workflow process -------------
    LANGGRAPH_POOL_MIN_SIZE: int = Field(2, ge=0, le=100)
    LANGGRAPH_POOL_MAX_SIZE: int = Field(20, ge=1, le=100)
    LANGGRAPH_POOL_TIMEOUT: float = Field(5.0, gt=0, le=120)
    # PgBouncer in transaction mode cannot keep prepared statements: asyncpg's statement cache and
    # psycopg's automatic prepares are switched off when this is true.
    DB_BEHIND_PGBOUNCER: bool = False

    # --- roadmap domain ------------------------------------------------------------------------------
    ROADMAP_DEFAULT_CONCEPTS: int = Field(30, ge=1, le=200)
    ROADMAP_MAX_CONCEPTS: int = Field(60, ge=1, le=200)
    # Concepts of one roadmap generated at once (the guide: 15; 10 roadmaps x 15 = 150 in flight).
    CONCEPT_CONCURRENCY_LIMIT: int = Field(15, ge=1, le=200)
    CONCEPT_MAX_ATTEMPTS: int = Field(3, ge=1, le=10)
    # Per-user creation quota (app.api.quota): a rate counted in Redis, shared by every worker and
    # replica ("30/minute", or several: "5/second; 30/minute"), and a cap on roadmaps still pending,
    # planning or generating. Each roadmap is minutes of shared LLM and worker time. Redis down: the
    # rate is not counted (creation works without Redis, see the outbox); the cap, in PostgreSQL, holds.
    ROADMAP_CREATE_RATE_LIMIT: str = "30/minute"
    ROADMAP_MAX_IN_PROGRESS: int = Field(5, ge=1, le=10_000)
    # A content task waits out a database outage this long before it fails and Celery retries it.
    CONTENT_DB_OUTAGE_SECONDS: float = Field(30.0, ge=0, le=600)
    # A roadmap in progress that has not moved (its row or any concept's) for this long is re-dispatched
    # by the watchdog; after ROADMAP_MAX_REDISPATCHES re-dispatches without finishing, it fails with
    # the reason. Longer than any one task may run (CELERY_*_TIME_LIMIT), so a slow task is not re-sent.
    ROADMAP_STALL_SECONDS: int = Field(1200, ge=5, le=86_400)
    ROADMAP_MAX_REDISPATCHES: int = Field(3, ge=0, le=100)
    WATCHDOG_INTERVAL_SECONDS: float = Field(30.0, gt=0, le=3600)

    # --- transactional outbox -------------------------------------------------------------------------
    # How long a request waits for the broker after its commit; past it the client still gets 202 (the
    # task is stored) and the relay publishes it. Bounds every POST's time spent on a stalled Redis.
    OUTBOX_PUBLISH_TIMEOUT: float = Field(1.0, gt=0, le=30)
    # The relay publishes messages left for this long (the request's own publish goes first), every
    # OUTBOX_RELAY_INTERVAL_SECONDS, from one process of the fleet at a time (an advisory lock).
    OUTBOX_RELAY_AFTER_SECONDS: float = Field(5.0, ge=0, le=3600)
    OUTBOX_RELAY_INTERVAL_SECONDS: float = Field(2.0, gt=0, le=3600)
    # 0 turns the relay, the watchdog and retention off in this process (app.api.background runs them).
    BACKGROUND_JOBS: bool = True

    # --- data lifecycle (app.messaging.retention) --------------------------------------------------------
    # A completed or failed roadmap's LangGraph checkpoint thread is deleted this long after it finished
    # (0: by the worker that finished it, at once); nothing resumes a finished roadmap, so it is dead weight.
    CHECKPOINT_RETENTION_SECONDS: int = Field(0, ge=0, le=31_536_000)
    # task_logs rows older than this are deleted (0: kept forever); they are for debugging, not records.
    TASK_LOG_RETENTION_DAYS: int = Field(30, ge=0, le=3650)
    # One retention round per API process this often: task_logs batches, then a checkpoint sweep task.
    RETENTION_INTERVAL_SECONDS: float = Field(300.0, gt=0, le=86_400)
    # Rows per delete batch: each batch is its own short transaction, so no lock or connection is held long.
    RETENTION_BATCH_SIZE: int = Field(2000, ge=1, le=100_000)
    # A batch that would wait longer than this for a row lock gives up (the next round retries).
    RETENTION_LOCK_TIMEOUT: float = Field(1.0, gt=0, le=60)
    # Pause between two batches: the connection goes back to the pool and the requests get the disk.
    RETENTION_BATCH_PAUSE_SECONDS: float = Field(0.05, ge=0, le=60)
    # Checkpoint threads looked at (and deleted) per step of a sweep, on the workflow worker's saver.
    CHECKPOINT_SWEEP_BATCH: int = Field(200, ge=1, le=10_000)

    # --- LLM and web search providers -----------------------------------------------------------------
    # auto: the OpenAI-compatible API when LLM_API_KEY is set, else the offline provider.
    LLM_PROVIDER: Literal["auto", "openai", "offline"] = "auto"
    LLM_BASE_URL: str = "https://api.openai.com/v1"
    LLM_MODEL: str = "gpt-4o-mini"
    LLM_TIMEOUT: float = Field(60.0, gt=0, le=600)
    # Simulated latency of the offline provider per call (docs/benchmarks.md's load tests use 1 s).
    LLM_OFFLINE_LATENCY: float = Field(0.0, ge=0, le=60)
    # Tavily keys live in the database (admin API); "offline" searches nothing outside this machine.
    SEARCH_PROVIDER: Literal["tavily", "offline"] = "tavily"
    TAVILY_BASE_URL: str = "https://api.tavily.com"
    SEARCH_TIMEOUT: float = Field(20.0, gt=0, le=120)
    SEARCH_OFFLINE_LATENCY: float = Field(0.0, ge=0, le=60)
    # The offline provider needs no key; true sends it through key choice and credit accounting anyway
    # (the load harness measures the router's real work that way).
    SEARCH_OFFLINE_USES_KEYS: bool = False
    # Seconds the Redis cache of key availability keeps an answer (the guide's tavily:keys:available, 0/1).
    TAVILY_AVAILABILITY_CACHE_TTL: int = Field(30, ge=1, le=3600)

    # --- auth -------------------------------------------------------------------------------------------
    JWT_ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    JWT_EXPIRE_MINUTES: int = Field(60, ge=1)
    # The longest life a token may claim (exp - iat) or have left (exp - now): a signed token with
    # exp = 1e30 would otherwise be a password that never expires. Tokens must carry iat.
    JWT_MAX_LIFETIME_MINUTES: int = Field(1440, ge=1, le=525_600)

    # --- worker metrics -----------------------------------------------------------------------------------
    # A Celery worker's parent serves its children's metrics on this port (0: off).
    WORKER_METRICS_PORT: int = Field(0, ge=0, le=65535)

    # --- Redis ----------------------------------------------------------------------------------------
    # rediss://...?ssl_cert_reqs=required works as well; may carry a password, hence secret.
    REDIS_URL: SecretStr = SecretStr("redis://localhost:6379/0")
    REDIS_TIMEOUT: float = Field(1.0, gt=0, le=30)

    # --- HTTP behaviour ---------------------------------------------------------------------------------
    # /health's own deadline, for all its checks together (run in parallel): what has not answered by
    # then is reported "timeout" and left to clean up in the background, never waited for. 0.5 s under
    # the 2 s a load balancer's probe allows, for the response itself and a busy event loop.
    HEALTH_CHECK_TIMEOUT: float = Field(1.5, gt=0, le=10)
    # Every request's deadline: past it the API answers 503 request_timeout (with Retry-After) whatever it
    # was waiting for. The backstop behind the database's own deadlines, longer than DB_POOL_TIMEOUT so
    # that an exhausted pool still answers as such (db_pool_exhausted).
    REQUEST_TIMEOUT_SECONDS: float = Field(8.0, gt=0, le=600)
    # --- shutdown: from SIGTERM to exit, inside Railway's drainingSeconds (shutdown_seconds) --------
    # The API stops listening at SIGTERM (new connections are refused, so a load balancer tries another
    # server) and serves the connections already open this much longer, every response with
    # Connection: close; then uvicorn closes the idle ones and waits for the requests in flight.
    API_DRAIN_SECONDS: float = Field(2.0, ge=0, le=60)
    # A worker lets its running tasks finish this long after SIGTERM (Celery's soft shutdown), then
    # cancels the rest; their late-acknowledged messages go back to the queue at once for another worker.
    CELERY_SOFT_SHUTDOWN_TIMEOUT: float = Field(15.0, ge=0, le=3600)
    # Added to each service's bound: closing pools (lifespan, worker_process_shutdown) and process exit.
    # Measured on 2 shared cores: the API under 1 s after its drain; a Celery worker 3.5-6.5 s after its
    # soft shutdown (the cold shutdown stops the pool's handlers, then terminates and joins children).
    SHUTDOWN_MARGIN_SECONDS: float = Field(10.0, gt=0, le=60)
    # Sent with every 503 so clients back off instead of hammering an exhausted pool.
    RETRY_AFTER_SECONDS: int = Field(2, ge=1, le=600)
    # The largest request body accepted (FastAPI's max_body_size): a larger one is answered 413 before
    # it is read, by its Content-Length or as soon as that many bytes arrived; without a limit the body
    # was read whole, before authentication. The API's bodies are a few hundred bytes.
    MAX_REQUEST_BODY_BYTES: int = Field(65_536, ge=1_024, le=104_857_600)
    # What a connection may make the API hold before it is authenticated (app.api.server's protocol,
    # in front of httptools, which bounds neither: 200 connections x 1 MB of unfinished headers took
    # 210 MB). The request line and headers together, in bytes: larger is 431 and the connection
    # closed. nginx's default allows 32 KiB (4 x 8k buffers), so what passes an edge passes here.
    MAX_REQUEST_HEADER_BYTES: int = Field(32_768, ge=4_096, le=1_048_576)
    # Header lines per request (Apache's LimitRequestFields): more is 431. The API's callers send ~10.
    MAX_REQUEST_HEADERS: int = Field(100, ge=16, le=10_000)
    # From a connection's first byte of a request (or its accept) to the end of its headers: a slower
    # one (slowloris, or a client that connects and says nothing) gets 408 and is closed.
    REQUEST_HEADER_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=300)
    # Open connections per uvicorn worker; one more is answered 503 and closed before anything is read
    # (uvicorn's --limit-concurrency would answer only once its headers were complete). Under the
    # usual 1024-descriptor limit, and with the header limit it bounds a worker's pre-auth buffers to
    # 512 x 32 KiB = 16 MiB. The load harness peaks at 320 clients over 8 workers.
    API_MAX_CONNECTIONS_PER_WORKER: int = Field(512, ge=16, le=100_000)
    # uvicorn's --timeout-keep-alive: a connection idle between requests is closed after this (uvicorn's
    # default, explicit). Shorter than an edge proxy's idle timeout only costs it a reconnect.
    API_KEEP_ALIVE_SECONDS: int = Field(5, ge=1, le=300)

    # --- secrets ----------------------------------------------------------------------------------------
    # Signs API bearer tokens; write and admin routes answer 401 until it is set (32+ characters).
    JWT_SECRET_KEY: SecretStr = SecretStr("")
    LLM_API_KEY: SecretStr = SecretStr("")

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("DATABASE_URL", "CHECKPOINTER_DATABASE_URL", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("DATABASE_URL", "CHECKPOINTER_DATABASE_URL")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgres://", "postgresql")):
            raise ValueError("must be a postgresql:// URL")
        if value is not None:
            # Parsed here as the engine will parse it: a port such as ":notaport" passed validation
            # and then failed every request with a 500. The URL holds a password: never echoed.
            from sqlalchemy.engine import make_url

            try:
                port = make_url(value.get_secret_value()).port
            except ValueError:
                port = -1
            if port is not None and not 1 <= port <= 65535:
                raise ValueError("its port must be a number from 1 to 65535 (one host only)")
        return value

    @field_validator("ROADMAP_CREATE_RATE_LIMIT")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError("must be a rate such as 30/minute or 5/second; 30/minute") from None
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if redis_cert_reqs(url) not in (None, "required", "optional", "none"):
            raise ValueError("ssl_cert_reqs must be required, optional or none")
        return value

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Fill what the environment left unset from its profile; explicit values win."""
        if isinstance(data, dict):
            profile = PROFILES.get(str(data.get("ENVIRONMENT", "production")), {})
            # A per-service pool left empty (``API_DB_POOL_SIZE=`` in an env file) means "unset":
            # the shared value applies, as it does when the variable is absent.
            optional = {n for s in topology.SERVICES for n in (s.pool_size_var, s.max_overflow_var)}
            data = {**profile, **{k: v for k, v in data.items() if not (k in optional and v == "")}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.LANGGRAPH_POOL_MIN_SIZE > self.LANGGRAPH_POOL_MAX_SIZE:
            raise ValueError(
                f"LANGGRAPH_POOL_MIN_SIZE ({self.LANGGRAPH_POOL_MIN_SIZE}) must be <= "
                f"LANGGRAPH_POOL_MAX_SIZE ({self.LANGGRAPH_POOL_MAX_SIZE})"
            )
        if self.DB_POOL_HIGH_USAGE_RATIO > self.DB_POOL_CRITICAL_USAGE_RATIO:
            raise ValueError("DB_POOL_HIGH_USAGE_RATIO must be <= DB_POOL_CRITICAL_USAGE_RATIO")
        secret = self.JWT_SECRET_KEY.get_secret_value()
        if secret and len(secret) < 32:
            raise ValueError("JWT_SECRET_KEY must be at least 32 characters (or empty to disable writes)")
        if self.JWT_EXPIRE_MINUTES > self.JWT_MAX_LIFETIME_MINUTES:
            raise ValueError(
                f"JWT_EXPIRE_MINUTES ({self.JWT_EXPIRE_MINUTES}) must be <= "
                f"JWT_MAX_LIFETIME_MINUTES ({self.JWT_MAX_LIFETIME_MINUTES})"
            )
        if self.ROADMAP_DEFAULT_CONCEPTS > self.ROADMAP_MAX_CONCEPTS:
            raise ValueError("ROADMAP_DEFAULT_CONCEPTS must be <= ROADMAP_MAX_CONCEPTS")
        inner_deadline = max(self.DB_POOL_TIMEOUT, self.HEALTH_CHECK_TIMEOUT)
        if inner_deadline >= self.REQUEST_TIMEOUT_SECONDS:
            raise ValueError(
                f"REQUEST_TIMEOUT_SECONDS ({self.REQUEST_TIMEOUT_SECONDS:g}) must be > DB_POOL_TIMEOUT "
                f"({self.DB_POOL_TIMEOUT:g}) and HEALTH_CHECK_TIMEOUT ({self.HEALTH_CHECK_TIMEOUT:g})"
            )
        if self.DB_ADMIN_RESERVE >= self.DB_CONNECTION_BUDGET:
            raise ValueError(
                f"DB_ADMIN_RESERVE ({self.DB_ADMIN_RESERVE}) must be < "
                f"DB_CONNECTION_BUDGET ({self.DB_CONNECTION_BUDGET})"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.load()
