import threading
import time

import numpy as np
import pytest

from harken.agent.sources.ringbuffer import RingBuffer

RATE = 16000


def produce(rb: RingBuffer, total: int, chunk: int, speedup: float) -> None:
    """Write a ramp (sample i has value i mod 2^20) in chunks, paced at speedup x real time."""
    period = chunk / RATE / speedup
    start = time.perf_counter()
    for k, i in enumerate(range(0, total, chunk)):
        rb.write((np.arange(i, min(i + chunk, total)) % (1 << 20)).astype(np.float32))
        delay = start + (k + 1) * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def test_no_loss_when_reader_keeps_up():
    # 30 s of audio at 20x real time into a 4 s ring: the reader may be descheduled for up
    # to 200 ms (a loaded CI machine) without losing a sample.
    total = 480_000
    rb = RingBuffer(4 * RATE)
    producer = threading.Thread(target=produce, args=(rb, total, 256, 20.0))
    producer.start()
    got = []
    while producer.is_alive() or rb.available:
        got.append(rb.read(timeout=0.05))
    producer.join()
    data = np.concatenate(got)
    assert rb.overflowed == 0
    assert data.size == total
    np.testing.assert_array_equal(data, (np.arange(total) % (1 << 20)).astype(np.float32))


def test_exact_overflow_count_when_reader_stalls():
    total, cap = 1_000_000, 20_000
    rb = RingBuffer(cap)
    producer = threading.Thread(target=produce, args=(rb, total, 320, 100.0))
    producer.start()
    producer.join()  # the reader is stalled for the whole run
    assert rb.overflowed == total - cap
    data = rb.read()
    assert data.size == cap
    # What survives is the newest audio, in order.
    np.testing.assert_array_equal(
        data, (np.arange(total - cap, total) % (1 << 20)).astype(np.float32))
    assert rb.overflowed == total - cap
    assert rb.read().size == 0


def test_partial_stall_accounts_for_every_sample():
    total, cap = 1_000_000, 8_000
    rb = RingBuffer(cap)
    producer = threading.Thread(target=produce, args=(rb, total, 160, 100.0))
    producer.start()
    received = 0
    last = -1.0
    while producer.is_alive() or rb.available:
        chunk = rb.read(max_samples=3000, timeout=0.05)
        if chunk.size:
            assert chunk[0] > last or chunk[0] == 0  # never out of order
            last = float(chunk[-1])
        received += chunk.size
        if received % 7 == 0:
            time.sleep(0.02)  # the reader hiccups now and then
    producer.join()
    assert received + rb.overflowed == total


def test_wraparound_and_oversized_write():
    rb = RingBuffer(10)
    rb.write(np.arange(7, dtype=np.float32))
    np.testing.assert_array_equal(rb.read(max_samples=5), np.arange(5))
    rb.write(np.arange(7, 13, dtype=np.float32))  # wraps
    np.testing.assert_array_equal(rb.read(), np.arange(5, 13))
    rb.write(np.arange(100, dtype=np.float32))  # larger than the buffer
    assert rb.overflowed == 90
    np.testing.assert_array_equal(rb.read(), np.arange(90, 100))


def test_read_waits_for_data_with_timeout():
    rb = RingBuffer(100)
    t0 = time.perf_counter()
    assert rb.read(timeout=0.1).size == 0
    assert time.perf_counter() - t0 >= 0.09
    timer = threading.Timer(0.05, rb.write, args=(np.ones(4, dtype=np.float32),))
    timer.start()
    t0 = time.perf_counter()
    assert rb.read(timeout=2.0).size == 4
    assert time.perf_counter() - t0 < 1.0


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0)


class _WriterDuringCopy(np.ndarray):
    """The ring's storage, with a writer that runs at a chosen moment: when the reader takes
    its first slice of the storage (mid-read), ``hook`` writes. Deterministic, no threads."""

    hook = None

    def __getitem__(self, key):
        hook, type(self).hook = type(self).hook, None
        if hook is not None:
            hook()
        return super().__getitem__(key)


def _ring_with_writer_during_copy(cap: int) -> RingBuffer:
    rb = RingBuffer(cap)
    rb._data = rb._data.view(_WriterDuringCopy)
    _WriterDuringCopy.hook = None
    return rb


def _arm(hook):
    _WriterDuringCopy.hook = hook


def test_a_writer_lapping_the_reader_mid_copy_drops_exactly_what_it_overwrote():
    cap = 10
    rb = _ring_with_writer_during_copy(cap)
    rb.write(np.arange(0, 8, dtype=np.float32))         # unread: 0..7 in slots 0..7
    # while the reader copies 0..7, the writer adds 8..20 (13 samples: more than the free
    # space), overwriting slots that held 0..10 of which the reader had claimed 0..7
    _arm(lambda: rb.write(np.arange(8, 21, dtype=np.float32)))
    out = rb.read()
    # what it began to overwrite is dropped: samples below 21 - 10 = 11, i.e. all of 0..7
    assert out.size == 0
    assert rb.overflowed == 11                            # 0..10 lost, counted once
    np.testing.assert_array_equal(rb.read(), np.arange(11, 21))
    assert rb.overflowed == 11


def test_a_partial_lap_mid_copy_keeps_the_samples_it_did_not_reach():
    cap = 10
    rb = _ring_with_writer_during_copy(cap)
    rb.write(np.arange(0, 8, dtype=np.float32))
    # the writer adds 8..12 (5 samples) during the copy: slots of 0..2 are claimed again
    _arm(lambda: rb.write(np.arange(8, 13, dtype=np.float32)))
    out = rb.read()
    np.testing.assert_array_equal(out, np.arange(3, 8))   # 0..2 may be torn: dropped
    assert rb.overflowed == 3
    np.testing.assert_array_equal(rb.read(), np.arange(8, 13))
    assert rb.overflowed == 3


def test_a_lap_by_one_sample_mid_copy_drops_exactly_that_sample():
    rb = _ring_with_writer_during_copy(10)
    rb.write(np.arange(0, 8, dtype=np.float32))
    _arm(lambda: rb.write(np.arange(8, 11, dtype=np.float32)))   # 11 > 10: slot of 0 again
    np.testing.assert_array_equal(rb.read(), np.arange(1, 8))
    assert rb.overflowed == 1


def test_a_writer_that_does_not_lap_mid_copy_loses_nothing():
    rb = _ring_with_writer_during_copy(10)
    rb.write(np.arange(0, 6, dtype=np.float32))
    _arm(lambda: rb.write(np.arange(6, 10, dtype=np.float32)))   # fills the ring exactly
    np.testing.assert_array_equal(rb.read(), np.arange(0, 6))
    np.testing.assert_array_equal(rb.read(), np.arange(6, 10))
    assert rb.overflowed == 0


def test_lapped_read_with_a_limit_counts_the_lost_once():
    rb = _ring_with_writer_during_copy(10)
    rb.write(np.arange(0, 10, dtype=np.float32))
    _arm(lambda: rb.write(np.arange(10, 14, dtype=np.float32)))   # overwrites 0..3
    out = rb.read(max_samples=6)                                # was copying 0..5
    np.testing.assert_array_equal(out, np.arange(4, 6))
    assert rb.overflowed == 4
    np.testing.assert_array_equal(rb.read(), np.arange(6, 14))
    assert rb.overflowed == 4


def test_available_written_and_overflowed_before_the_reader_notices():
    rb = RingBuffer(10)
    assert (rb.available, rb.written, rb.overflowed) == (0, 0, 0)
    rb.write(np.zeros(0, dtype=np.float32))                     # an empty write changes nothing
    assert (rb.available, rb.written, rb.overflowed) == (0, 0, 0)
    assert not rb._ready.is_set()                               # nor wakes the reader
    rb.write(np.arange(7, dtype=np.float32))
    assert (rb.available, rb.written, rb.overflowed) == (7, 7, 0)
    rb.write(np.arange(7, 12, dtype=np.float32))                # two more than fit
    assert (rb.available, rb.written, rb.overflowed) == (10, 12, 2)
    np.testing.assert_array_equal(rb.read(max_samples=3), [2, 3, 4])
    assert (rb.available, rb.overflowed) == (7, 2)
    rb.write(np.arange(12, 22, dtype=np.float32))               # an exact capacity write
    assert (rb.available, rb.written, rb.overflowed) == (10, 22, 9)
    np.testing.assert_array_equal(rb.read(), np.arange(12, 22))


def test_a_write_exactly_one_capacity_larger_wraps_at_the_right_place():
    rb = RingBuffer(4)
    rb.write(np.arange(3, dtype=np.float32))
    assert rb.read(max_samples=3).size == 3
    rb.write(np.arange(3, 11, dtype=np.float32))                # 8 = 2 x capacity, from slot 3
    assert rb.overflowed == 4
    np.testing.assert_array_equal(rb.read(), np.arange(7, 11))
    assert rb.read(max_samples=0).size == 0


def test_read_without_timeout_returns_at_once_and_none_waits_for_a_writer():
    rb = RingBuffer(8)
    assert rb.read().size == 0                                  # timeout 0: no wait at all
    writer = threading.Thread(target=rb.write, args=(np.ones(3, dtype=np.float32),))
    writer.start()
    assert rb.read(timeout=None).size == 3                      # blocks until the write
    writer.join()


def test_single_samples_and_a_one_sample_ring():
    rb = RingBuffer(1)
    rb.write(np.array([5.0], dtype=np.float32))
    np.testing.assert_array_equal(rb.read(), [5.0])
    rb.write(np.array([1, 2, 3], dtype=np.float32))
    assert rb.overflowed == 2
    np.testing.assert_array_equal(rb.read(max_samples=1), [3.0])
    big = RingBuffer(16)
    for v in range(5):                                          # one sample per callback
        big.write(np.array([v], dtype=np.float32))
        np.testing.assert_array_equal(big.read(max_samples=1), [v])
    assert big.overflowed == 0


def test_read_with_the_default_timeout_never_waits():
    class NoWait(threading.Event):
        def wait(self, timeout=None):
            raise AssertionError("read() with timeout 0 must not wait")
    rb = RingBuffer(8)
    rb._ready = NoWait()
    assert rb.read().size == 0
    rb.write(np.ones(2, dtype=np.float32))
    assert rb.read().size == 2 and rb.read(timeout=0.0).size == 0
