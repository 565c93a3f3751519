import threading
import time

import numpy as np
import pytest

from harken.agent.ringbuffer import RingBuffer

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
