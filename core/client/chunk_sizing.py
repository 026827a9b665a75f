"""How much of a chunk to send in one request: whole chunks on a good link, pieces sized to a link that breaks.

The server fixes the chunk size at init, and a chunk PUT cut off by a reset is
lost entirely: on a link that resets every 2 s at 3 MB/s an 8 MiB chunk never
arrives. A piece (``X-Chunk-Offset``, see ``core.protocol``) is acknowledged on
its own, so after a link failure the sizer sends pieces of about one eighth
of what the link carried between its last two failures: a reset then costs on
average half a piece, about 6 % of what the link moves. After a run of
successes eight times the piece size the piece size doubles, up to whole chunks
again, so a link that recovered stops paying a request per piece.

One sizer is shared by every job and thread of a ``ServerClient``: it
describes the link, not a file.
"""

from __future__ import annotations

import threading

from core.protocol import MIN_PIECE_SIZE

# A piece is this fraction of the bytes the link carried between failures.
CARRIED_DIVISOR = 8
# Double the piece size after this many piece sizes were sent without a failure.
GROW_AFTER = 8


class PieceSizer:
    """Decrease to what the link carries between breaks, multiplicative increase after sustained success."""

    def __init__(
        self, *, minimum: int = MIN_PIECE_SIZE, divisor: int = CARRIED_DIVISOR, grow_after: int = GROW_AFTER
    ) -> None:
        self.minimum = minimum
        self.divisor = divisor
        self.grow_after = grow_after
        self.pieces_supported = True  # False once a server refused a piece (an older server)
        self._size: int | None = None  # None: whole chunks
        self._carried = 0  # bytes acknowledged since the last failure
        self._lock = threading.Lock()

    @property
    def size(self) -> int | None:
        """The current piece size; None while whole chunks are sent."""
        return self._size

    def piece(self, offset: int, chunk_length: int) -> int:
        """Bytes to send next of a chunk of ``chunk_length`` bytes whose first ``offset`` bytes are acknowledged."""
        remaining = chunk_length - offset
        size = self._size
        if size is None or not self.pieces_supported:
            return remaining
        return min(size, remaining)

    def succeeded(self, nbytes: int, chunk_length: int) -> None:
        with self._lock:
            self._carried += nbytes
            if self._size is None or self._carried < self.grow_after * self._size:
                return
            self._carried = 0
            self._size *= 2
            if self._size >= chunk_length:
                self._size = None

    def failed(self, moved: int, chunk_length: int) -> None:
        """A request broke on the link after handing ``moved`` bytes to the socket.

        A request that broke before its body started (no route, connection refused) says nothing
        about how long the link lives once it is up, and leaves the size alone.
        """
        if moved <= 0:
            return
        with self._lock:
            carried = self._carried + moved
            self._carried = 0
            current = self._size or chunk_length
            self._size = max(self.minimum, min(current, carried // self.divisor))
