"""The one Settings class: every variable a user can set, declared by name, production's values as defaults.

``ENVIRONMENT=development`` alone selects the development profile (``PROFILES``, the guide's development
column); a variable set explicitly always wins over its profile. Each service's own variables are
declared in ``app.config.services``. How the values are read, and how an invalid one stops start-up in
one line, is ``app.config.loading``; what is derived from them is ``app.config.connections`` (URLs,
connect arguments) and ``app.sizing`` (pools, plans, shutdown bounds). Every password, key or DSN is a
``SecretStr``, so that no repr, log line or response can show it.
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

    # --- SQLAlchemy pool, per process: a service's <PREFIX>_DB_POOL_SIZE / _DB_MAX_OVERFLOW win -------
    DB_POOL_SIZE: int = Field(6, ge=1, le=200)
    DB_MAX_OVERFLOW: int = Field(4, ge=0, le=200)
    # Fail fast: SQLAlchemy's default of 30 s hangs requests.
    DB_POOL_TIMEOUT: float = Field(5.0, gt=0, le=120)
    # Recycle before a managed server or a NAT drops an idle connection (often at 30-60 min).
    DB_POOL_RECYCLE: int = Field(1800, ge=-1)
    # Ping a pooled connection idle longer than DB_POOL_PING_IDLE_SECONDS before handing it out
    # (HikariCP's aliveBypassWindowMs is 500 ms; 0 pings every checkout).
    DB_POOL_PRE_PING: bool = True
    DB_POOL_PING_IDLE_SECONDS: float = Field(0.5, ge=0, le=3600)
    DB_CONNECT_TIMEOUT: float = Field(5.0, gt=0, le=120)
    # The server cancels a statement running longer than this (statement_timeout); the client gives up
    # DB_COMMAND_TIMEOUT_MARGIN later when no answer came at all, so a stalled server holds nothing forever.
    DB_STATEMENT_TIMEOUT: float = Field(10.0, gt=0, le=3600)
    DB_COMMAND_TIMEOUT_MARGIN: float = Field(1.0, gt=0, le=60)
    # The server ends a session idle inside a transaction this long, freeing its locks and slot. 0: off.
    DB_IDLE_IN_TRANSACTION_TIMEOUT: float = Field(60.0, ge=0, le=86400)
    # Server and libpq keepalive probes start after this idle time, so a vanished host's connections
    # leave the budget in about a minute, not the kernel's two hours (app.config.connections).
    DB_TCP_KEEPALIVES_IDLE: int = Field(30, ge=1, le=7200)
    # Pool instrumentation (events -> Prometheus, usage logs); off only to measure its cost.
    DB_POOL_METRICS_ENABLED: bool = True
    DB_POOL_HIGH_USAGE_RATIO: float = Field(0.7, gt=0, le=1)
    DB_POOL_CRITICAL_USAGE_RATIO: float = Field(0.9, gt=0, le=1)
    DB_POOL_USAGE_LOG_INTERVAL: float = Field(10.0, ge=0)
    # Like HikariCP's leakDetectionThreshold: a checkout held longer logs where it was taken. 0: off.
    DB_LEAK_DETECTION_THRESHOLD: float = Field(30.0, ge=0)
    # null (a connection per checkout) only measures what pooling is worth (load_harness.py --compare).
    DB_POOL_CLASS: Literal["queue", "null"] = "queue"

    # --- connection allocation: this environment's share of max_connections (the guide: 280 of 400) ----
    DB_CONNECTION_BUDGET: int = Field(280, ge=1)
    DB_ADMIN_RESERVE: int = Field(20, ge=0)  # left free for psql and monitoring
    # The guide's "estimated real peak" as a share of the theoretical maximum (app.budget shows both).
    DB_BUDGET_PEAK_FACTOR: float = Field(0.6, gt=0, le=1)
    # At start, when the worst case exceeds the budget or the server: warn logs, strict refuses to start.
    DB_BUDGET_ENFORCEMENT: Literal["off", "warn", "strict"] = "warn"
    # A rolling deploy runs old and new side by side, so the redeployed pools count twice (DeployCase).
    DB_BUDGET_DEPLOY_CASE: topology.DeployCase = "one_service"
    # Enforce budget - reserve on the server (CONNECTION LIMIT of the database, and of the role where each
    # environment has its own), so another environment cannot take this one's connections.
    DB_CONNECTION_CAP: Literal["off", "database", "database_and_role"] = "off"
    # Set by railway_entrypoint.sh once it ran the guard, so the processes it starts do not check again.
    DB_BUDGET_CHECKED: bool = False
    # /metrics runs the pg_stat_activity audit (one short query) so alerts see the server's own count.
    DB_AUDIT_ON_SCRAPE: bool = True

    # --- Celery (process counts, replicas, time limits: app.config.services) ---------------------------
    # Buffered task events go to task_logs in batches this size, one flush per TASK_LOG_FLUSH_INTERVAL.
    TASK_LOG_BATCH_SIZE: int = Field(500, ge=1, le=10_000)
    TASK_LOG_FLUSH_INTERVAL: float = Field(1.0, gt=0, le=300)
    # Prefixes every Redis key (Celery's and ours) so several stacks can share one Redis.
    REDIS_KEY_PREFIX: str = ""

    # --- LangGraph checkpointer pool (psycopg AsyncConnectionPool), per workflow process -------------
    LANGGRAPH_POOL_MIN_SIZE: int = Field(2, ge=0, le=100)
    LANGGRAPH_POOL_MAX_SIZE: int = Field(20, ge=1, le=100)
    LANGGRAPH_POOL_TIMEOUT: float = Field(5.0, gt=0, le=120)
    # PgBouncer in transaction mode cannot keep prepared statements: true switches them off.
    DB_BEHIND_PGBOUNCER: bool = False

    # --- roadmap domain ------------------------------------------------------------------------------
    ROADMAP_DEFAULT_CONCEPTS: int = Field(30, ge=1, le=200)
    ROADMAP_MAX_CONCEPTS: int = Field(60, ge=1, le=200)
    # Concepts of one roadmap generated at once (the guide: 15; 10 roadmaps x 15 = 150 in flight).
    CONCEPT_CONCURRENCY_LIMIT: int = Field(15, ge=1, le=200)
    CONCEPT_MAX_ATTEMPTS: int = Field(3, ge=1, le=10)
    # Per-user quota (app.api.quota), since each roadmap is minutes of shared LLM and worker time: a rate
    # counted in Redis ("5/second; 30/minute") and a cap on roadmaps in progress, held in PostgreSQL.
    ROADMAP_CREATE_RATE_LIMIT: str = "30/minute"
    ROADMAP_MAX_IN_PROGRESS: int = Field(5, ge=1, le=10_000)
    # A content task waits out a database outage this long before it fails and Celery retries it.
    CONTENT_DB_OUTAGE_SECONDS: float = Field(30.0, ge=0, le=600)
    # The watchdog re-dispatches a roadmap that has not moved this long, and fails it after
    # ROADMAP_MAX_REDISPATCHES. Longer than any task's time limit, so a slow task is not re-sent.
    ROADMAP_STALL_SECONDS: int = Field(1200, ge=5, le=86_400)
    ROADMAP_MAX_REDISPATCHES: int = Field(3, ge=0, le=100)
    WATCHDOG_INTERVAL_SECONDS: float = Field(30.0, gt=0, le=3600)

    # --- transactional outbox -------------------------------------------------------------------------
    # A request waits this long for the broker after its commit; past it the relay publishes the task.
    OUTBOX_PUBLISH_TIMEOUT: float = Field(1.0, gt=0, le=30)
    # The relay publishes messages left this long, every OUTBOX_RELAY_INTERVAL_SECONDS, one process at a time.
    OUTBOX_RELAY_AFTER_SECONDS: float = Field(5.0, ge=0, le=3600)
    OUTBOX_RELAY_INTERVAL_SECONDS: float = Field(2.0, gt=0, le=3600)
    # 0 turns the relay, the watchdog and retention off in this process (app.api.background runs them).
    BACKGROUND_JOBS: bool = True

    # --- data lifecycle (app.messaging.retention) --------------------------------------------------------
    # A finished roadmap's checkpoints are deleted this long after (0: at once); nothing resumes it.
    CHECKPOINT_RETENTION_SECONDS: int = Field(0, ge=0, le=31_536_000)
    # task_logs rows older than this are deleted (0: kept forever); they are for debugging, not records.
    TASK_LOG_RETENTION_DAYS: int = Field(30, ge=0, le=3650)
    RETENTION_INTERVAL_SECONDS: float = Field(300.0, gt=0, le=86_400)
    # Deletes run in short batches, each its own transaction, with a pause between them, so no lock or
    # connection is held long; a batch waiting longer than RETENTION_LOCK_TIMEOUT for a lock gives up.
    RETENTION_BATCH_SIZE: int = Field(2000, ge=1, le=100_000)
    RETENTION_LOCK_TIMEOUT: float = Field(1.0, gt=0, le=60)
    RETENTION_BATCH_PAUSE_SECONDS: float = Field(0.05, ge=0, le=60)
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
    # true sends the offline provider through key choice and accounting (the load harness measures it).
    SEARCH_OFFLINE_USES_KEYS: bool = False
    # Seconds the Redis cache of key availability keeps an answer (the guide's tavily:keys:available, 0/1).
    TAVILY_AVAILABILITY_CACHE_TTL: int = Field(30, ge=1, le=3600)

    # --- auth -------------------------------------------------------------------------------------------
    JWT_ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    JWT_EXPIRE_MINUTES: int = Field(60, ge=1)
    # The longest life a token may claim or have left, so a signed token cannot be a password forever.
    JWT_MAX_LIFETIME_MINUTES: int = Field(1440, ge=1, le=525_600)

    # A Celery worker's parent serves its children's metrics on this port (0: off).
    WORKER_METRICS_PORT: int = Field(0, ge=0, le=65535)

    # --- Redis (rediss://...?ssl_cert_reqs=required works too; may carry a password, hence secret) ----
    REDIS_URL: SecretStr = SecretStr("redis://localhost:6379/0")
    REDIS_TIMEOUT: float = Field(1.0, gt=0, le=30)

    # --- HTTP behaviour ---------------------------------------------------------------------------------
    # /health's deadline for all its checks together: 0.5 s under the 2 s a load balancer's probe allows.
    HEALTH_CHECK_TIMEOUT: float = Field(1.5, gt=0, le=10)
    # Every request's deadline (503 request_timeout): longer than DB_POOL_TIMEOUT, so that an exhausted
    # pool still answers as such.
    REQUEST_TIMEOUT_SECONDS: float = Field(8.0, gt=0, le=600)
    # Admission control on the database routes (app.api.admission): "adaptive" finds the concurrency at
    # which requests stop queueing, "static" admits the pool's size, "off" leaves the queue to the pool,
    # "edge" computes the adaptive limit and leaves the refusing to an HAProxy in front (app.api.edge).
    API_ADMISSION: Literal["adaptive", "static", "edge", "off"] = "adaptive"
    # With API_ADMISSION=edge: where the API's supervisor answers HAProxy's agent-check with the limit.
    API_EDGE_AGENT_PORT: int = Field(0, ge=0, le=65535)
    # Admitted requests may take this many times their unqueued latency before the limit shrinks.
    API_ADMISSION_TOLERANCE: float = Field(2.0, ge=1.0, le=10.0)
    # --- shutdown: SIGTERM to exit, inside Railway's drainingSeconds (app.sizing.shutdown_seconds) ---
    # The API refuses new connections at SIGTERM and serves the open ones this much longer.
    API_DRAIN_SECONDS: float = Field(2.0, ge=0, le=60)
    # A worker lets running tasks finish this long after SIGTERM, then hands the rest back to the queue.
    CELERY_SOFT_SHUTDOWN_TIMEOUT: float = Field(15.0, ge=0, le=3600)
    # Closing the pools and exiting, after the above (measured: API under 1 s, a worker 3.5-6.5 s).
    SHUTDOWN_MARGIN_SECONDS: float = Field(10.0, gt=0, le=60)
    # Sent with every 503 so clients back off instead of hammering an exhausted pool.
    RETRY_AFTER_SECONDS: int = Field(2, ge=1, le=600)
    # A larger body is answered 413 before it is read (and before authentication); ours are ~100s of bytes.
    MAX_REQUEST_BODY_BYTES: int = Field(65_536, ge=1_024, le=104_857_600)
    # Bounds what an unauthenticated connection makes the API hold (httptools bounds nothing): request
    # line and headers, larger is 431. nginx's default allows 32 KiB, so what passes an edge passes here.
    MAX_REQUEST_HEADER_BYTES: int = Field(32_768, ge=4_096, le=1_048_576)
    # Header lines per request (Apache's LimitRequestFields): more is 431. The API's callers send ~10.
    MAX_REQUEST_HEADERS: int = Field(100, ge=16, le=10_000)
    # From a request's first byte (or the accept) to the end of its headers; slower (slowloris) is 408.
    REQUEST_HEADER_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=300)
    # Open connections per uvicorn worker (one more is 503 before anything is read): under the usual
    # 1024-descriptor limit, and with the header limit 512 x 32 KiB = 16 MiB of pre-auth buffers at most.
    API_MAX_CONNECTIONS_PER_WORKER: int = Field(512, ge=16, le=100_000)
    # uvicorn's --timeout-keep-alive (its default, explicit); shorter than a proxy's only costs a reconnect.
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
            # Parsed as the engine will, so a bad port stops start-up instead of failing every request.
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
            # ``API_DB_POOL_SIZE=`` (empty, in an env file) means unset: the shared value applies.
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
        if self.API_ADMISSION == "edge" and not self.API_EDGE_AGENT_PORT:
            raise ValueError("API_EDGE_AGENT_PORT must be set (1-65535) when API_ADMISSION=edge")
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
