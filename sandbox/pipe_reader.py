"""A pipe read into an `asyncio.StreamReader`, its descriptor closed once, by its reader.

Not `loop.connect_read_pipe`: under uvloop (0.23), the transport's libuv handle closes the
descriptor, then the file object handed to it closes the same number again
(MagicStack/uvloop#763). A descriptor that another thread opened in between (the worker
writes cgroup files in threads) is then closed under its owner, whose own close later takes
whatever the worker had opened next at that number. In a 100,000-sample eval one job's
sandbox lost its socket that way, and a job's code could as well have gone down another
job's socket. `add_reader` and `os.read` behave alike on both loops, and close nothing.
"""

from __future__ import annotations

import asyncio
import os

READ_BYTES = 65536


class PipeReader(asyncio.ReadTransport):
    """Reads the pipe `fd` (made non-blocking) into `reader` until its end; owns `fd`, from
    the start (closed here if this fails).

    The reader pauses it when its buffer is full and resumes it once read, as it does the
    transports that `connect_read_pipe` makes.
    """

    def __init__(self, fd: int, reader: asyncio.StreamReader) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._reader = reader
        self._watched = False
        self._ended = False
        try:
            os.set_blocking(fd, False)
            reader.set_transport(self)
            self.resume_reading()
        except BaseException:
            self.close()
            raise

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end()
            self._reader.set_exception(exc)
            return
        if data:
            self._reader.feed_data(data)
        else:
            self._end()
            self._reader.feed_eof()

    def _end(self) -> None:
        self.pause_reading()
        self._ended = True

    def pause_reading(self) -> None:
        if self._watched:
            self._loop.remove_reader(self._fd)
            self._watched = False

    def resume_reading(self) -> None:
        if not self._watched and not self._ended and self._fd >= 0:
            self._loop.add_reader(self._fd, self._readable)
            self._watched = True

    def is_reading(self) -> bool:
        return self._watched

    def is_closing(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Stop reading, end the reader's stream (as a transport's close does) and close the
        descriptor; again, nothing. Safe once the loop has ended (it watches nothing)."""
        if self._fd < 0:
            return
        if not self._ended:
            self._end()
            self._reader.feed_eof()
        os.close(self._fd)
        self._fd = -1
