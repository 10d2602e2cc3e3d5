"""`PipeReader` reads a job's pipe as asyncio's own pipe transport would, on both loops."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from sandbox.pipe_reader import PipeReader

Runner = Callable[[Coroutine[Any, Any, None]], None]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop", LOOPS)
def test_a_pipe_is_read_whole_and_in_order_past_a_full_buffer(loop: str) -> None:
    data = os.urandom(4 << 20)

    async def main() -> None:
        read_end, write_end = os.pipe()
        stream = asyncio.StreamReader(limit=4096)  # paused beyond 8 KiB buffered
        pipe = PipeReader(read_end, stream)

        def write() -> None:
            with os.fdopen(write_end, "wb") as out:
                out.write(data)

        writer = threading.Thread(target=write)
        writer.start()
        received = bytearray()
        paused = False
        while chunk := await stream.read(1024):
            paused = paused or not pipe.is_reading()
            received += chunk
            await asyncio.sleep(0)  # a reader slower than the writer
        await asyncio.to_thread(writer.join)
        assert received == data and paused
        pipe.close()
        assert pipe.is_closing()

    LOOPS[loop](main())


@pytest.mark.parametrize("loop", LOOPS)
def test_closing_ends_a_pending_read_and_the_descriptor(loop: str) -> None:
    async def main() -> None:
        read_end, write_end = os.pipe()
        stream = asyncio.StreamReader()
        pipe = PipeReader(read_end, stream)
        pending = asyncio.create_task(stream.read(10))
        await asyncio.sleep(0.01)
        pipe.close()
        pipe.close()  # again: nothing
        async with asyncio.timeout(5):
            assert await pending == b""
        with pytest.raises(OSError):
            os.fstat(read_end)
        os.close(write_end)

    LOOPS[loop](main())
