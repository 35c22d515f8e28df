"""The default path's three ways through the data agree with the staged graph.

bnlit's default layer takes a plain whole-array path for small inputs and a
streaming, cache-blocked path for large ones (see bnlit.engines.numpy). Here the
size thresholds are lowered so that small test inputs take every path: plain,
streaming by whole rows, and streaming with rows split by channels.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bnlit import BatchNormalization, _threads, stats
from bnlit.engines import get_engine
from bnlit.engines import numpy as _kernels

from _checks import numerical_gradient, relative_error

PATHS = {
    "plain": {},
    "streaming": {"SMALL_BYTES": 0, "BLOCK_BYTES": 4096},
    "streaming-split-rows": {"SMALL_BYTES": 0, "BLOCK_BYTES": 64},
    # Small blocks and one block per thread, so that every test's data keeps 3 threads busy
    # (the fixture checks it); whole rows or split rows, as the shape gives.
    "streaming-3-threads": {"SMALL_BYTES": 0, "BLOCK_BYTES": 96, "MIN_BLOCKS_PER_THREAD": 1, "threads": 3},
}


@pytest.fixture
def num_threads():
    """Sets bnlit's thread count for one test and restores it afterwards, whatever happens."""
    before = _threads.get_num_threads()
    try:
        yield _threads.set_num_threads
    finally:
        _threads.set_num_threads(before)


@pytest.fixture
def thread_log(monkeypatch) -> list[list[str]]:
    """For every split pass of the kernels, the thread that worked on each group of blocks."""
    log: list[list[str]] = []
    split = _kernels.run_split

    def logged(work, items, threads):
        result = split(lambda group: (threading.current_thread().name, len(group), work(group)), items, threads)
        assert all(size > 0 for _, size, _ in result)  # no idle group
        log.append([name for name, _, _ in result])
        return [r for _, _, r in result]

    monkeypatch.setattr(_kernels, "run_split", logged)
    return log


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch, num_threads, thread_log) -> str:
    settings = dict(PATHS[request.param])
    threads = settings.pop("threads", 1)
    for name, value in settings.items():
        monkeypatch.setattr(_kernels, name, value)
    num_threads(threads)
    yield request.param
    # Every pass of the streaming kernels used all the threads asked for, on bnlit's pool.
    if request.param != "plain":
        assert thread_log, "the streaming kernels did not run"
    for names in thread_log:
        assert len(names) == threads, thread_log
        assert all(n.startswith("bnlit") for n in names) if threads > 1 else names == ["MainThread"]


def test_the_paths_are_taken(path, thread_log, rng) -> None:
    x = rng.normal(size=(40, 3, 4, 4))
    x3 = x.reshape(40, 3, 16)
    blocks = list(_kernels._blocks(x3))
    if path == "plain":
        assert _kernels._is_small(x3)
    else:
        assert not _kernels._is_small(x3) and len(blocks) > 1
        split = path in ("streaming-split-rows", "streaming-3-threads")
        assert any(chans != slice(None) for _, chans in blocks) == split
    covered = np.zeros(x3.shape, dtype=int)
    for rows, chans in blocks:
        covered[rows, chans] += 1
    assert np.all(covered == 1)  # every value in exactly one block
    bn = BatchNormalization(np.ones(3), np.zeros(3))
    bn.forward(x)
    bn.backward(x)
    # Split passes: statistics (whole rows only: split rows take the blockwise merge, on one
    # thread), normalisation, gradient sums, input gradient; none on the plain path.
    assert len(thread_log) == {"plain": 0, "streaming": 4}.get(path, 3)


@pytest.mark.parametrize("shape", [(50, 3), (6, 3, 5, 4)], ids=["2d", "4d"])
@pytest.mark.parametrize("location, spread", [(0.5, 1.0), (300.0, 1.0), (2.0, 1e-3)],
                         ids=["centred", "far-from-zero", "tiny-spread"])
def test_default_path_agrees_with_staged(path, shape, location, spread, rng) -> None:
    per_channel = rng.uniform(0.5, 3, size=shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    x = location + rng.normal(size=shape) * per_channel * spread
    dout = rng.normal(size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    fast, staged = BatchNormalization(gamma, beta), BatchNormalization(gamma, beta, staged=True)
    for _ in range(2):  # two steps: moving statistics too
        np.testing.assert_allclose(fast.forward(x), staged.forward(x), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(fast.moving_mean, staged.moving_mean, rtol=1e-12)
    np.testing.assert_allclose(fast.moving_var, staged.moving_var, rtol=1e-11)
    dx_fast, dx_staged = fast.backward(dout), staged.backward(dout)
    assert np.max(np.abs(dx_fast - dx_staged)) <= 1e-10 * np.max(np.abs(dx_staged))
    np.testing.assert_allclose(fast.dgamma, staged.dgamma, rtol=1e-10)
    np.testing.assert_allclose(fast.dbeta, staged.dbeta, rtol=1e-10)
    np.testing.assert_allclose(fast.forward(x, train_flg=False), staged.forward(x, train_flg=False), rtol=1e-11)


@pytest.mark.parametrize("shape", [(9, 4), (3, 2, 3, 4)], ids=["2d", "4d"])
def test_gradient_check_on_every_path(path, shape, rng) -> None:
    x = 3.0 + rng.normal(size=shape)
    dout = rng.normal(size=shape)
    gamma = rng.normal(1.0, 0.5, size=shape[1])
    bn = BatchNormalization(gamma, np.zeros(shape[1]), epsilon=1e-5)

    def loss() -> float:
        return float(np.sum(bn.forward(x) * dout))

    bn.forward(x)
    dx = bn.backward(dout)
    assert relative_error(dx, numerical_gradient(loss, x)) < 1e-7
    assert relative_error(bn.dgamma, numerical_gradient(loss, gamma)) < 1e-7


@pytest.mark.parametrize("location, spread", [(1e4, 0.1), (0.0, 1.0), (-50.0, 3.0)])
def test_float32_matches_float64(path, location, spread, rng) -> None:
    shape = (32, 3, 12, 12)
    x = (location + spread * rng.standard_normal(shape)).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    gamma = np.array([0.5, 1.0, 2.0])
    bn32, bn64 = BatchNormalization(gamma, np.ones(3)), BatchNormalization(gamma, np.ones(3))
    out32, out64 = bn32.forward(x), bn64.forward(x.astype(np.float64))
    assert out32.dtype == np.float32
    assert np.max(np.abs(out32 - out64)) <= 1e-5 * np.max(np.abs(out64))
    np.testing.assert_allclose(bn32.var, bn64.var, rtol=1e-5)
    dx32, dx64 = bn32.backward(dout), bn64.backward(dout.astype(np.float64))
    assert np.max(np.abs(dx32 - dx64)) <= 1e-5 * np.max(np.abs(dx64))
    np.testing.assert_allclose(bn32.dgamma, bn64.dgamma, rtol=1e-4)
    # Prediction with moving statistics that match the data, so that the output is of unit size.
    stats = {"moving_mean": bn64.mean, "moving_var": bn64.var}
    pred32 = BatchNormalization(gamma, np.ones(3), **stats).forward(x, train_flg=False)
    pred64 = BatchNormalization(gamma, np.ones(3), **stats).forward(x.astype(np.float64), train_flg=False)
    assert pred32.dtype == np.float32
    assert np.max(np.abs(pred32 - pred64)) <= 1e-5 * np.max(np.abs(pred64))


def test_statistics_survive_drift_along_the_batch(monkeypatch, rng) -> None:
    """The first block is a poor shift here: the blockwise merge must take over."""
    monkeypatch.setattr(_kernels, "SMALL_BYTES", 0)
    calls = []
    blockwise = _kernels.channel_stats_blockwise
    monkeypatch.setattr(_kernels, "channel_stats_blockwise", lambda x3: calls.append(1) or blockwise(x3))
    x = rng.normal(size=(6400, 4)).astype(np.float32)
    x[_kernels.MAX_BLOCK_ROWS:] += 1000.0  # everything after the first block sits far away
    mean, var = _kernels.channel_stats(x.reshape(6400, 4, 1))
    assert calls, "the shifted sums should have been rejected"
    reference = x.astype(np.float64)
    np.testing.assert_allclose(mean, reference.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, reference.var(axis=0), rtol=1e-5)


def test_threads_give_the_same_results(monkeypatch, num_threads, thread_log, rng) -> None:
    monkeypatch.setattr(_kernels, "SMALL_BYTES", 0)
    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 2048)
    x = rng.normal(2.0, 3.0, size=(128, 5, 4, 4))  # 3 rows a block: 43 blocks, enough for 4 threads
    assert len(list(_kernels._blocks(x.reshape(128, 5, 16)))) >= 4 * _kernels.MIN_BLOCKS_PER_THREAD
    dout = rng.normal(size=x.shape)
    results = {}
    for threads in (1, 2, 4):
        num_threads(threads)
        thread_log.clear()
        bn = BatchNormalization(np.ones(5), np.zeros(5))
        results[threads] = (bn.forward(x), bn.backward(dout), bn.dgamma)
        assert len(thread_log) == 4 and all(len(names) == threads for names in thread_log), (threads, thread_log)
    for threads in (2, 4):
        for one, many in zip(results[1], results[threads]):
            np.testing.assert_allclose(many, one, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("blocks, asked, used", [(7, 4, 1), (8, 4, 1), (16, 4, 2), (31, 4, 3), (32, 4, 4), (100, 4, 4), (100, 1, 1)])
def test_threads_get_at_least_min_blocks_each(blocks, asked, used, num_threads) -> None:
    """Threads are used only when each gets MIN_BLOCKS_PER_THREAD (8) blocks; the groups are
    contiguous, in order, and as even as can be."""
    assert _kernels.MIN_BLOCKS_PER_THREAD == 8
    num_threads(asked)
    items = list(range(blocks))
    groups = _threads.run_split(list, items, blocks // _kernels.MIN_BLOCKS_PER_THREAD)
    assert len(groups) == used
    assert [i for group in groups for i in group] == items
    assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_n_threads_work_at_once(num_threads) -> None:
    """Asking for n threads gives n groups that run at the same time: each group waits at a
    barrier that opens only when all n have arrived. Each new count replaces the pool."""
    for threads in (2, 8, 3):  # 8: more than a default-sized pool on a small machine
        num_threads(threads)
        barrier = threading.Barrier(threads, timeout=10)
        names = _threads.run_split(lambda group: (barrier.wait(), threading.current_thread().name)[1],
                                   list(range(8 * threads)), threads)
        assert len(set(names)) == threads


def test_never_more_groups_than_items(num_threads) -> None:
    num_threads(4)
    assert _threads.run_split(list, [0, 1], 8) == [[0], [1]]
    assert _threads.run_split(list, [], 8) == [[]]


def test_set_num_threads(num_threads) -> None:
    num_threads(3)
    assert _threads.get_num_threads() == 3
    assert _threads.run_split(lambda g: threading.current_thread().name, list(range(9)), 3) != ["MainThread"]
    num_threads(2)  # a new count replaces the pool: two groups, not the old three
    names = _threads.run_split(lambda g: threading.current_thread().name, list(range(100)), 100)
    assert len(names) == 2 and all(n.startswith("bnlit") for n in names) and _threads.get_num_threads() == 2
    num_threads(1)
    assert _threads.run_split(lambda g: threading.current_thread().name, list(range(100)), 100) == ["MainThread"]
    for bad in (0, -2):
        with pytest.raises(ValueError) as info:
            _threads.set_num_threads(bad)
        assert str(info.value) == f"the number of threads must be at least 1; got {bad}"
        assert _threads.get_num_threads() == 1
    for bad, shown in ((2.0, "2.0 (float)"), ("2", "'2' (str)"), (True, "True (bool)")):
        with pytest.raises(TypeError) as info:
            _threads.set_num_threads(bad)
        assert str(info.value) == f"the number of threads must be a whole number (int); got {shown}"


def test_setting_the_same_thread_count_keeps_the_pool(num_threads) -> None:
    """Only a new count replaces the pool: setting the count it has keeps its threads."""
    num_threads(2)
    _threads.run_split(lambda g: None, list(range(4)), 2)
    pool = _threads._pool
    assert pool is not None
    num_threads(2)
    assert _threads._pool is pool


def test_centred_decision() -> None:
    for spread in (1.0, 2.0, 0.25):
        spreads = np.full(2, spread)
        assert stats.is_centred(np.array([0.0, -stats.CENTRED_RATIO * spread]), spreads)
        assert not stats.is_centred(np.array([0.0, 1.01 * stats.CENTRED_RATIO * spread]), spreads)
    # stats_from takes the spread as sqrt(var + epsilon): mean 10 is 5 spreads from zero at
    # variance 4, 20 spreads at variance 0.25.
    assert stats.stats_from(np.array([10.0]), np.array([4.0]), 1e-12).centred is True
    assert stats.stats_from(np.array([10.0]), np.array([0.25]), 1e-12).centred is False
    # Epsilon counts: 8 * sqrt(1.5) = 9.8 < 10, but 8 * sqrt(1.5 + 0.1) = 10.1.
    assert stats.stats_from(np.array([10.0]), np.array([1.5]), 1e-12).centred is False
    assert stats.stats_from(np.array([10.0]), np.array([1.5]), 0.1).centred is True


def test_one_pass_statistics_on_data_without_drift(monkeypatch, rng) -> None:
    """Stationary data, far from zero: the shifted one-pass sums are accepted, and the
    blockwise merge (the slower fallback) is not needed."""
    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 4096)
    calls = []
    blockwise = _kernels.channel_stats_blockwise
    monkeypatch.setattr(_kernels, "channel_stats_blockwise", lambda x3: calls.append(1) or blockwise(x3))
    for location, spread in [(1000.0, 1.0), (0.0, 1e-3), (-5.0, 20.0)]:
        x3 = location + spread * rng.standard_normal((300, 4, 3))
        mean, var = _kernels.channel_stats(x3)
        np.testing.assert_allclose(mean, x3.mean(axis=(0, 2)), rtol=1e-12, atol=1e-12 * spread)
        np.testing.assert_allclose(var, x3.var(axis=(0, 2)), rtol=1e-10)
    assert not calls


def test_blocks_of_whole_rows(monkeypatch) -> None:
    """rows = min(BLOCK_BYTES // row bytes, MAX_BLOCK_VALUES // S, MAX_BLOCK_ROWS), at least 1."""
    x3 = np.zeros((7, 3, 2))  # 48 bytes a row

    def starts() -> list[int]:
        blocks = list(_kernels._blocks(x3))
        assert all(chans == slice(None) for _, chans in blocks)
        return [rows.start for rows, _ in blocks]

    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 100)
    assert starts() == [0, 2, 4, 6]
    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 48)
    assert starts() == list(range(7))
    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 1000)
    monkeypatch.setattr(_kernels, "MAX_BLOCK_VALUES", 6)  # 3 rows of S = 2
    assert starts() == [0, 3, 6]
    monkeypatch.setattr(_kernels, "MAX_BLOCK_ROWS", 2)
    assert starts() == [0, 2, 4, 6]


def test_split_rows_group_as_many_channels_as_fit(monkeypatch) -> None:
    """A row of 16 channels x 2 values x 8 bytes = 256 bytes, blocks of 64 bytes: 4 channels a block."""
    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 64)
    blocks = list(_kernels._blocks(np.zeros((2, 16, 2))))
    assert blocks == [(slice(row, row + 1), slice(c, c + 4)) for row in range(2) for c in range(0, 16, 4)]
    monkeypatch.setattr(_kernels, "BLOCK_BYTES", 40)  # 2.5 channels' worth: 2 a block, the rest alone
    blocks = list(_kernels._blocks(np.zeros((1, 5, 2))))
    assert blocks == [(slice(0, 1), slice(0, 2)), (slice(0, 1), slice(2, 4)), (slice(0, 1), slice(4, 5))]
    blocks = list(_kernels._blocks(np.zeros((1, 3, 16))))  # one channel is 128 bytes: one a block
    assert blocks == [(slice(0, 1), slice(c, c + 1)) for c in range(3)]


@pytest.mark.parametrize("shape", [(7, 3, 1), (5, 2, 6)])
def test_engine_halves(shape, rng) -> None:
    """The numpy engine's halves against direct NumPy, centred or not."""
    engine = get_engine("numpy")
    x3 = 4.0 + rng.normal(size=shape)
    dout3 = rng.normal(size=shape)
    m = engine.moments(x3)
    assert m.count == shape[0] * shape[2]
    np.testing.assert_allclose(m.mean, x3.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(m.var, x3.var(axis=(0, 2)), rtol=1e-12)
    scale, shift = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    slope, offset = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    col = lambda v: v[None, :, None]  # noqa: E731
    for centred in (True, False):
        out3 = np.empty(shape)
        engine.normalize(x3, m.mean, scale, shift, out3, centred)
        np.testing.assert_allclose(out3, (x3 - col(m.mean)) * col(scale) + col(shift), rtol=1e-12, atol=1e-12)
        sums = engine.grad_sums(x3, dout3, m.mean, centred)
        np.testing.assert_allclose(sums.sum_dout, dout3.sum(axis=(0, 2)), rtol=1e-12)
        np.testing.assert_allclose(sums.sum_dout_xmu, (dout3 * (x3 - col(m.mean))).sum(axis=(0, 2)), rtol=1e-10)
        engine.input_grad(x3, dout3, m.mean, scale, slope, offset, out3, centred)
        want = col(scale) * (dout3 + col(slope) * (x3 - col(m.mean)) + col(offset))
        np.testing.assert_allclose(out3, want, rtol=1e-12, atol=1e-12)


def test_merge_moments_of_two_parts_is_the_whole(rng) -> None:
    x = rng.normal(3.0, 2.0, size=(40, 2))
    whole = stats.Moments(40, x.mean(axis=0), x.var(axis=0))
    for cut in (1, 7, 20, 39):
        a, b = x[:cut], x[cut:]
        merged = stats.merge_moments(stats.Moments(cut, a.mean(axis=0), a.var(axis=0)),
                                     stats.Moments(40 - cut, b.mean(axis=0), b.var(axis=0)))
        assert merged.count == 40
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-13)
        np.testing.assert_allclose(merged.var, whole.var, rtol=1e-12)
        np.testing.assert_allclose(merged.m2, 40 * whole.var, rtol=1e-12)
    empty = stats.Moments(0, np.zeros(2), np.zeros(2))
    assert stats.merge_moments(empty, whole) is whole
    assert stats.merge_moments(whole, empty) is whole


def test_thread_count_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("BNLIT_NUM_THREADS", "3")
    assert _threads._threads_from_environment() == 3
    monkeypatch.setenv("BNLIT_NUM_THREADS", "")
    assert _threads._threads_from_environment() == 1
    monkeypatch.setenv("BNLIT_NUM_THREADS", " 2 ")
    assert _threads._threads_from_environment() == 2
    monkeypatch.delenv("BNLIT_NUM_THREADS")
    assert _threads._threads_from_environment() == 1
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("BNLIT_NUM_THREADS", bad)
        with pytest.raises(ValueError) as info:
            _threads._threads_from_environment()
        assert str(info.value) == f"BNLIT_NUM_THREADS must be a whole number of at least 1; got {bad!r}"
