"""Reading a job's stdout and stderr as produced, within one shared byte budget."""

from __future__ import annotations

import asyncio
import codecs

from sandbox.models import OutputChunk, OutputSink, Stream

READ_BYTES = 65536
# An unbuffered `print("tick", i)` is four writes; waiting this long for the rest of a line
# sends it as one chunk (one event) at no visible cost to liveness.
_LINE_WAIT_S = 0.005


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    """What the pipe has now, completed to the end of a line if that follows at once."""
    data = await reader.read(READ_BYTES)
    while data and not data.endswith(b"\n") and len(data) < READ_BYTES:
        try:
            # Not wait_for: on Python 3.11 it loses a cancel that lands as the read completes.
            async with asyncio.timeout(_LINE_WAIT_S):
                more = await reader.read(READ_BYTES - len(data))
        except TimeoutError:
            break
        if not more:
            break
        data += more
    return data


class OutputCollector:
    """Forwards chunks in order, keeps a copy for the result, and stops at the output cap."""

    def __init__(self, on_output: OutputSink, cap_bytes: int) -> None:
        self._on_output = on_output
        self._remaining = cap_bytes
        self.overflowed = asyncio.Event()
        self._text: dict[Stream, list[str]] = {"stdout": [], "stderr": []}

    def text(self, stream: Stream) -> str:
        return "".join(self._text[stream])

    async def read(self, stream: Stream, reader: asyncio.StreamReader) -> None:
        """Read `reader` to its end (or to the cap), emitting each chunk as it arrives."""
        # Incremental: a multi-byte character split across two reads is decoded whole.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offset = 0
        while True:
            data = await _read_some(reader)
            final = not data
            if len(data) > self._remaining:
                data = data[: self._remaining]
                self.overflowed.set()
                final = True
            self._remaining -= len(data)
            text = decoder.decode(data, final=final)
            if text:
                self._text[stream].append(text)
                await self._on_output(OutputChunk(stream=stream, data=text, offset=offset))
            offset += len(data)
            if final:
                break
        # Past the cap, read on to the end and drop it: the job is being killed, and a pipe
        # left unread would keep its transport open after the run.
        while await reader.read(READ_BYTES):
            pass
