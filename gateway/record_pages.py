"""Reading the records of a run's jobs, kept in pages (`RecordPage`) in the `jobs` bucket.

A page is written once, before any of its job ids is handed out, and never changed; so the
pages read last are kept parsed, and a run's results or event stream, which look up every
job of a page in turn, read each page once.
"""

from __future__ import annotations

from collections import OrderedDict

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus import BusUnavailableError, JobRecord, RecordPage

_CACHED_PAGES = 256  # at most 100 jobs each (run_submit.RECORDS_PER_PAGE): 25,600 records


class RecordPages:
    """The gateway's access to record pages, with the newest-read pages kept parsed."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._pages: OrderedDict[str, RecordPage] = OrderedDict()

    async def record(self, page_id: str, index: int) -> JobRecord | None:
        """The record of the job at `index` of the page, or None when there is none."""
        page = self._pages.get(page_id)
        if page is None:
            page = await self._read(page_id)
            if page is None:
                return None
            self._pages[page_id] = page
            if len(self._pages) > _CACHED_PAGES:
                self._pages.popitem(last=False)
        else:
            self._pages.move_to_end(page_id)
        return page.record(page_id, index)

    async def _read(self, page_id: str) -> RecordPage | None:
        try:
            entry = await self._kv.get(page_id)
        except KeyNotFoundError:
            return None
        except Exception as exc:
            raise BusUnavailableError(f"could not read job records {page_id}: {exc!r}") from exc
        return None if entry.value is None else RecordPage.model_validate_json(entry.value)
