# -*- test-case-name: tests.test_shared_state -*-
"""
The C{[shared]} settings: where the Redis that instances share state through listens, and
the bounds of that sharing.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class SharedSettings:
    """
    State shared between instances through Redis (C{docs/operating.md}, "Shared state in
    Redis").

    @ivar redis: a client endpoint string (C{tcp:host=...:port=...} or C{unix:path=...});
        empty: nothing is shared beyond this host.
    @ivar password_file: a file (mode 0600) holding the password sent with AUTH; empty for
        none.
    @ivar key_prefix: prepended to every key and to the channel name.
    @ivar timeout: the most seconds anything waits for Redis (a C{RESUME} for its spent
        check); a Redis slower than this counts as unreachable.
    @ivar rate_window: the length of the shared per-source rate windows, in seconds.
    """

    redis: str = ""
    password_file: str = ""
    key_prefix: str = "netguard:"
    timeout: float = attrs.field(default=0.05, converter=float)
    rate_window: float = attrs.field(default=1.0, converter=float)

    @property
    def enabled(self) -> bool:
        """Whether state is shared through Redis."""
        return bool(self.redis)
