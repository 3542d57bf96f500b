"""The collector settings of long-running processes (btard_ray.heap)."""

from __future__ import annotations

import gc
import weakref

from btard_ray.heap import long_lived_frozen


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # only the cyclic collector can free it


def test_objects_alive_at_entry_are_exempt_for_the_block_and_collected_after():
    old = _Cycle()
    old_ref = weakref.ref(old)
    with long_lived_frozen():
        assert gc.get_freeze_count() > 0
        del old
        gc.collect()
        assert old_ref() is not None  # frozen: the collector does not look at it
        new = _Cycle()
        new_ref = weakref.ref(new)
        del new
        gc.collect()
        assert new_ref() is None  # made inside the block: collected as usual
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None  # unfrozen on exit: garbage from before is still freed
