"""The engines: choosing one, the numba engine against the NumPy engine, its tiles,
threads, accuracy far from zero, and where its compiled kernels are cached.

The layer-level tests (gradients, properties, errors, seed examples, PyTorch)
run once per engine through tests/conftest.py; here are the engine's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnlit
from bnlit import BatchNormalization, engines, stats

from _checks import numerical_gradient, relative_error

ROOT = Path(__file__).resolve().parents[1]
HINT = 'pip install "bnlit[fast]"'

numba = pytest.importorskip("numba", reason=f"the numba engine is optional: {HINT}")
from bnlit.engines import numba as fused  # noqa: E402  (needs numba to mean anything)

# Shapes that take every loop of the numba engine: rows (short runs, 2-D), rows in
# several channel groups, planes (long runs).
SHAPES = {
    "2d": (50, 3),
    "4d-short-runs": (6, 3, 5, 4),
    "4d-short-runs-groups": (5, 2 * fused.ROW_WIDTH // 16 + 3, 4, 4),
    "4d-planes": (6, 3, 8, 8),
}


@pytest.fixture(params=["one-tile", "tiles-of-2-rows"])
def tiles(request, monkeypatch) -> str:
    """Small inputs fit one tile; tiles of two rows make several along the batch."""
    if request.param != "one-tile":
        monkeypatch.setattr(fused, "MAX_ROWS", 2)
    return request.param


def scaled(rng: np.random.Generator, shape: tuple[int, ...], location: float, spread: float = 1.0) -> np.ndarray:
    per_channel = rng.uniform(0.5, 3.0, size=shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    return location + spread * per_channel * rng.standard_normal(shape)


def run(engine: str, x: np.ndarray, dout: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> dict:
    bn = BatchNormalization(gamma, beta, engine=engine)
    results = {"out": bn.forward(x), "out again": bn.forward(x)}  # second step: moving statistics move
    results["dx"] = bn.backward(dout)
    results.update(dgamma=bn.dgamma, dbeta=bn.dbeta, mean=bn.mean, var=bn.var,
                   moving_mean=bn.moving_mean, moving_var=bn.moving_var,
                   prediction=bn.forward(x, train_flg=False))
    return results


# ----------------------------------------------------------------- choosing
def test_auto_is_numba_when_installed_and_bnlit_engine_overrides(monkeypatch) -> None:
    monkeypatch.delenv("BNLIT_ENGINE", raising=False)
    assert engines.resolve("auto") == "numba"
    assert BatchNormalization(np.ones(2), np.zeros(2)).engine == "numba"
    monkeypatch.setenv("BNLIT_ENGINE", "numpy")
    assert BatchNormalization(np.ones(2), np.zeros(2)).engine == "numpy"
    assert BatchNormalization(np.ones(2), np.zeros(2), engine="numba").engine == "numba"  # explicit wins
    monkeypatch.setenv("BNLIT_ENGINE", "cuda")
    with pytest.raises(ValueError, match="BNLIT_ENGINE must be one of \\['numba', 'numpy'\\] or 'auto'; got 'cuda'"):
        BatchNormalization(np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="engine must be one of .* got 'fortran'"):
        BatchNormalization(np.ones(2), np.zeros(2), engine="fortran")


def test_without_numba_auto_is_numpy_and_numba_is_a_clear_error(tmp_path) -> None:
    """In a process where ``import numba`` fails, as on a machine without it."""
    script = (
        "import sys; sys.modules['numba'] = None\n"  # makes `import numba` raise ImportError
        "import numpy as np\n"
        "from bnlit import BatchNormalization\n"
        "bn = BatchNormalization(np.ones(2), np.zeros(2))\n"
        "print(bn.engine)\n"
        "print(bn.forward(np.array([[1.0, 2.0], [3.0, 5.0]]))[0, 1])\n"
        "try:\n"
        "    BatchNormalization(np.ones(2), np.zeros(2), engine='numba')\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BNLIT_ENGINE"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    engine, value, message = result.stdout.splitlines()
    assert engine == "numpy"
    assert float(value) == pytest.approx(-1.0, abs=1e-6)
    assert "the numba engine needs the optional package numba" in message and HINT in message


# ------------------------------------------------------- agreement with NumPy
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("location", [0.5, 300.0], ids=["centred", "far-from-zero"])
def test_numba_agrees_with_numpy_in_float64(shape, location, tiles, rng) -> None:
    x, dout = scaled(rng, shape, location), rng.standard_normal(shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    want, got = run("numpy", x, dout, gamma, beta), run("numba", x, dout, gamma, beta)
    for name in want:
        scale = np.max(np.abs(want[name]))
        if name == "dgamma":  # a sum that cancels: compared with the size of its terms
            axes = (0,) + tuple(range(2, x.ndim))
            centred = x - x.mean(axis=axes, keepdims=True)
            scale = np.max(np.abs(dout * centred).sum(axis=axes) / np.sqrt(want["var"]))
        assert np.max(np.abs(got[name] - want[name])) <= 1e-12 * scale, name


@pytest.mark.parametrize("shape", [SHAPES["2d"], SHAPES["4d-short-runs"], SHAPES["4d-planes"]], ids=["2d", "short", "planes"])
def test_float32_in_float32_out_and_out_buffers_are_written(shape, rng) -> None:
    x = scaled(rng, shape, 2.0).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    bn = BatchNormalization(np.ones(shape[1]), np.zeros(shape[1]), engine="numba")
    fresh = bn.forward(x)
    dx_fresh = bn.backward(dout)
    assert fresh.dtype == dx_fresh.dtype == bn.dgamma.dtype == np.float32
    y, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
    assert bn.forward(x, out=y) is y and bn.backward(dout, out=dx) is dx
    np.testing.assert_array_equal(y, fresh)
    np.testing.assert_array_equal(dx, dx_fresh)
    pred = np.full_like(x, np.nan)
    assert bn.forward(x, train_flg=False, out=pred) is pred
    np.testing.assert_array_equal(pred, bn.forward(x, train_flg=False))


def test_non_contiguous_input_and_output_views(rng) -> None:
    base = scaled(rng, (8, 6, 5, 10), 1.0)
    x = base[:, ::2, :, ::2]  # strided view: the engine must not read it as contiguous
    dout = rng.standard_normal((8, 3, 5, 10))[..., ::2]
    assert not x.flags.c_contiguous and not dout.flags.c_contiguous
    want = run("numpy", np.ascontiguousarray(x), np.ascontiguousarray(dout), np.ones(3), np.zeros(3))
    got = run("numba", x, dout, np.ones(3), np.zeros(3))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)
    engine = engines.get_engine("numba")
    x3 = np.ascontiguousarray(x).reshape(8, 3, -1)
    out3 = np.zeros((8, 3, 2 * x3.shape[2]))[:, :, ::2]  # not contiguous: written through a buffer
    engine.normalize(x3, np.zeros(3), np.full(3, 2.0), np.ones(3), out3, True)
    np.testing.assert_allclose(out3, 2.0 * x3 + 1.0, rtol=1e-15)


@pytest.mark.parametrize("shape", [(3, 2, 6, 6), (7, 3)], ids=["planes", "rows"])
def test_gradient_check_on_both_loop_orders(shape, rng) -> None:
    """The layer-level gradient checks use small images (row loops); here the plane loops too."""
    if len(shape) == 4:
        assert shape[2] * shape[3] >= fused.PLANE_MIN  # the plane loops
    x = 2.0 + rng.standard_normal(shape)
    dout = rng.standard_normal(shape)
    gamma = rng.normal(1.0, 0.5, size=shape[1])
    bn = BatchNormalization(gamma, np.zeros(shape[1]), epsilon=1e-5, engine="numba")

    def loss() -> float:
        return float(np.sum(bn.forward(x) * dout))

    bn.forward(x)
    dx = bn.backward(dout)
    assert relative_error(dx, numerical_gradient(loss, x)) < 1e-7
    assert relative_error(bn.dgamma, numerical_gradient(loss, gamma)) < 1e-7


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("shape", [(4096, 3), (16, 3, 32, 32), (64, 3, 4, 4)], ids=["2d", "planes", "short"])
@pytest.mark.parametrize("location, spread", [(1e4, 0.1), (-50.0, 3.0), (0.0, 1e30)])
def test_float32_matches_float64(shape, location, spread, rng) -> None:
    """float32 data far from zero (or of huge spread): every sum is formed in float64."""
    x = (location + spread * rng.standard_normal(shape)).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    gamma = np.array([0.5, 1.0, 2.0])
    bn32 = BatchNormalization(gamma, np.ones(3), engine="numba")
    bn64 = BatchNormalization(gamma, np.ones(3), engine="numpy")
    out32, out64 = bn32.forward(x), bn64.forward(x.astype(np.float64))
    assert out32.dtype == np.float32
    assert np.max(np.abs(out32 - out64)) <= 1e-5 * np.max(np.abs(out64))
    np.testing.assert_allclose(bn32.var, bn64.var, rtol=1e-5)
    dx32, dx64 = bn32.backward(dout), bn64.backward(dout.astype(np.float64))
    assert np.max(np.abs(dx32 - dx64)) <= 1e-5 * np.max(np.abs(dx64))
    np.testing.assert_allclose(bn32.dgamma, bn64.dgamma, rtol=1e-4)


def test_float64_far_from_zero_keeps_its_digits(rng) -> None:
    """mean 1e8, spread 1e-3 in float64: a sum of raw squares would keep no digit."""
    for shape in [(600, 2), (8, 2, 16, 16)]:
        x = 1e8 + 1e-3 * rng.standard_normal(shape)
        axes = (0,) + tuple(range(2, x.ndim))
        moments = engines.get_engine("numba").moments(x.reshape(shape[0], shape[1], -1))
        centred = x - x.mean(axis=axes, keepdims=True)
        np.testing.assert_allclose(moments.var, (centred * centred).mean(axis=axes), rtol=1e-7)


def test_statistics_survive_drift_along_the_batch(monkeypatch, rng) -> None:
    """Each tile along the batch shifts by its own first value; tiles merge by Chan's update."""
    monkeypatch.setattr(fused, "MAX_ROWS", 64)
    x = rng.normal(size=(4 * 64, 4)).astype(np.float32)
    x[64:] += 1000.0  # every tile after the first sits a thousand spreads away
    x[3 * 64:] -= 3000.0
    moments = engines.get_engine("numba").moments(x.reshape(x.shape[0], 4, 1))
    reference = x.astype(np.float64)
    np.testing.assert_allclose(moments.mean, reference.mean(axis=0), rtol=0, atol=1e-12 * 3000)
    np.testing.assert_allclose(moments.var, reference.var(axis=0), rtol=1e-10)


def test_tile_merge_is_chans_update(rng) -> None:
    """The compiled merge gives what bnlit.stats.merge_moments gives, tile after tile."""
    counts = np.array([12.0, 12.0, 5.0])
    parts = [rng.normal(loc, 2.0, size=(int(n), 3)) for loc, n in zip((0.0, 40.0, -7.0), counts)]
    shift = np.array([p[0] for p in parts])
    s1 = np.array([(p - p[0]).sum(axis=0) for p in parts])
    s2 = np.array([((p - p[0]) ** 2).sum(axis=0) for p in parts])
    mean, var = fused._merge_tiles(shift, s1, s2, counts)
    merged = stats.Moments(0, np.zeros(3), np.zeros(3))
    for p in parts:
        merged = stats.merge_moments(merged, stats.Moments(len(p), p.mean(axis=0), p.var(axis=0)))
    np.testing.assert_allclose(mean, merged.mean, rtol=1e-13)
    np.testing.assert_allclose(var, merged.var, rtol=1e-12)
    np.testing.assert_allclose(var, np.concatenate(parts).var(axis=0), rtol=1e-12)


# ------------------------------------------------------------------- threads
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one core: numba has no second thread to use")
@pytest.mark.parametrize("shape", [(301, 5), SHAPES["4d-short-runs-groups"], (37, 2, 6, 6)], ids=["2d", "short", "planes"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_give_identical_results(shape, dtype, monkeypatch, rng) -> None:
    monkeypatch.setattr(fused, "MIN_BYTES_PER_THREAD", 1)  # small test inputs use threads too
    monkeypatch.setattr(fused, "MAX_ROWS", 3)  # and several tiles to share out
    x = scaled(rng, shape, 3.0).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    before = bnlit.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            bnlit.set_num_threads(threads)
            results[threads] = run("numba", x, dout, np.ones(shape[1]), np.zeros(shape[1]))
            assert numba.get_num_threads() == threads  # the kernels really ran on that many
    finally:
        bnlit.set_num_threads(before)
    for name, value in results[1].items():
        np.testing.assert_array_equal(results[2][name], value, err_msg=name)


def test_small_inputs_stay_on_one_thread(monkeypatch) -> None:
    before = bnlit.get_num_threads()
    try:
        bnlit.set_num_threads(2)
        BatchNormalization(np.ones(3), np.zeros(3), engine="numba").forward(np.ones((8, 3)) * np.arange(8)[:, None])
        assert numba.get_num_threads() == 1
    finally:
        bnlit.set_num_threads(before)


# ---------------------------------------------------------------- the cache
def test_cache_folder_falls_back_when_the_package_is_read_only(tmp_path, monkeypatch) -> None:
    package = tmp_path / "engines"
    package.mkdir()
    (package / "__pycache__").write_text("a file where the folder would go: nothing can be written there")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = fused.cache_folder(str(package))
    assert folder is not None and folder.startswith(str(tmp_path / "tmp" / "bnlit-numba-"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert fused.cache_folder(str(package)) == str(tmp_path / "cache" / "bnlit" / "numba")
    assert fused.cache_folder(str(tmp_path)) == str(tmp_path / "__pycache__")  # writable: in the tree
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "chosen"))
    assert fused.cache_folder(str(package)) == str(tmp_path / "chosen")


def test_a_read_only_install_caches_its_kernels_elsewhere(tmp_path) -> None:
    """A copy of the package whose __pycache__ cannot be made, in a fresh process:
    the kernels compile, and their cache lands in the fallback folder."""
    shutil.copytree(ROOT / "bnlit", tmp_path / "site" / "bnlit", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "site" / "bnlit" / "engines" / "__pycache__").write_text("")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "BNLIT_ENGINE")}
    env.update(PYTHONPATH=str(tmp_path / "site"), XDG_CACHE_HOME=str(tmp_path / "no-cache"), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "no-cache").write_text("")  # a file: the user cache is not writable either
    script = (
        "import numpy as np, bnlit\n"
        "from bnlit.engines import numba as fused\n"
        "assert bnlit.__file__.startswith(%r), bnlit.__file__\n"
        "x = np.arange(12.0).reshape(4, 3) ** 1.5\n"
        "bn = bnlit.BatchNormalization(np.ones(3), np.zeros(3))\n"
        "bn.forward(x)\n"
        "print(bn.engine, fused.CACHE_FOLDER)\n"
    ) % str(tmp_path / "site")
    result = subprocess.run([sys.executable, "-B", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    engine, folder = result.stdout.split()
    assert engine == "numba" and folder.startswith(str(tmp_path / "tmp" / "bnlit-numba-"))
    assert list(Path(folder).rglob("*.nbi")), "no kernel was cached"
