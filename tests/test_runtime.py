"""app.runtime, the one owner of a process's resources: pure, no server needed.

What the rest of the code relies on: a resource is built once per process (also when first asked for
concurrently), a forked child starts without any of its parent's and never finalizes them, and
shutdown closes everything newest first even when one close fails."""

from __future__ import annotations

import asyncio
import os

from app.runtime import Runtime


def test_built_once_and_forgotten_in_a_forked_child() -> None:
    runtime = Runtime()
    built: list[object] = []
    abandoned: list[object] = []

    def build() -> object:
        built.append(object())
        return built[-1]

    first = runtime.get("thing", build, abandon=abandoned.append)
    assert runtime.get("thing", build) is first and len(built) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's resource abandoned, kept alive, a new one built on demand
        os.close(read)
        fresh = runtime.get("thing", build)
        ok = abandoned == [first] and runtime._inherited == [first] and fresh is not first
        os.write(write, b"ok" if ok else b"no")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 2)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert runtime.peek("thing") is first and abandoned == []  # the parent keeps its own


async def test_concurrent_first_users_share_one_opening() -> None:
    runtime = Runtime()
    opened = 0

    async def opener() -> object:
        nonlocal opened
        opened += 1
        await asyncio.sleep(0.01)
        return object()

    values = await asyncio.gather(*(runtime.open("pool", opener) for _ in range(5)))
    assert opened == 1 and all(v is values[0] for v in values)


async def test_closed_newest_first_and_one_failure_closes_the_rest() -> None:
    runtime = Runtime()
    closed: list[str] = []

    async def close(name: str) -> None:
        closed.append(name)
        if name == "redis":
            raise ConnectionError("already gone")

    for name in ("engine", "redis", "checkpointer"):
        runtime.get(name, lambda name=name: name, close=close)
    await runtime.aclose()
    assert closed == ["checkpointer", "redis", "engine"]
    assert runtime.peek("engine") is None


def test_one_loop_for_every_run_until_shutdown() -> None:
    runtime = Runtime()

    async def loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    first = runtime.run(loop())
    assert runtime.run(loop()) is first  # pooled asyncpg connections belong to this loop
    runtime.shutdown()
    assert first.is_closed()


async def test_an_opening_whose_caller_was_cancelled_is_still_held_and_closed() -> None:
    runtime = Runtime()
    closed: list[object] = []

    async def opener() -> object:
        await asyncio.sleep(0.05)
        return "pool"

    async def close(value: object) -> None:
        closed.append(value)

    caller = asyncio.ensure_future(runtime.open("pool", opener, close=close))
    await asyncio.sleep(0.01)
    caller.cancel()
    await runtime.aclose()  # waits for the opening it cannot abandon, then closes what it opened
    assert closed == ["pool"]


def test_an_opening_cancelled_with_its_loop_is_opened_again() -> None:
    runtime = Runtime()
    opened: list[asyncio.AbstractEventLoop] = []

    async def opener() -> str:
        opened.append(asyncio.get_running_loop())
        await asyncio.sleep(10)
        return "never"

    async def abandon_first() -> None:
        caller = asyncio.ensure_future(runtime.open("pool", opener))
        await asyncio.sleep(0.01)
        assert not caller.done()  # asyncio.run cancels it, and the opening, with its loop

    asyncio.run(abandon_first())

    async def second() -> str:
        async def quick() -> str:
            return "pool"

        return await runtime.open("pool", quick)

    assert asyncio.run(second()) == "pool" and len(opened) == 1


def test_a_resource_built_from_another() -> None:
    runtime = Runtime()
    client = runtime.get("outer", lambda: ("limiter", runtime.get("inner", lambda: "client")))
    assert client == ("limiter", "client") and runtime.peek("inner") == "client"
