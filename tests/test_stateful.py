"""A stateful property test of the layer (Hypothesis ``RuleBasedStateMachine``).

Random sequences of construction, training forward, prediction, backward,
rebinding of every setting (gamma, beta, rho, epsilon, the moving statistics, the
flags) to valid and invalid values, ``out=`` buffers (fresh, of the wrong dtype,
aliasing the input, overlapping it, aliasing what the layer keeps), thread-count
changes and the engine's three paths. After every step, either

- the call succeeded, what the model says is valid, and every result equals the
  exact reference of tests/_state.py within the rounding of its dtype; or
- the call raised ``ValueError``/``TypeError``, what the model says is invalid,
  and the layer's state is byte-for-byte what it was.

Which values are valid is not worked out by re-implementing bnlit's checks: each
generated value carries its label (the documented table of the layer's
docstring). ``make test`` runs a bounded, derandomized run; ``pytest -m long``
runs a long one (``BNLIT_STATEFUL_EXAMPLES``, default 3000) and prints what it tried.
"""

from __future__ import annotations

import decimal
import fractions
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from bnlit import BatchNormalization, LayerStateError, _threads
from bnlit.engines import numpy as kernels

from _state import (
    Unrepresentable,
    assert_close,
    assert_same_state,
    by_channel,
    channel_max,
    check_against_reference,
    exact_moments,
    reference_prediction,
    reference_training,
    snapshot,
    tolerance,
)

LIMIT = 2.0**1000  # the documented float64 range of a batch variance
PATHS = {"plain": (1 << 18, 1 << 20), "streaming": (0, 4096), "split-rows": (0, 64)}  # (SMALL_BYTES, BLOCK_BYTES)


# ------------------------------------------------------------------------------- labelled values
def pick(draw: st.DrawFn, values: list, odds: int = 6) -> Any:
    """One of ``values`` (labelled (value, valid) pairs): an invalid one about once in ``odds``."""
    good = [v for v in values if v[-1]]
    bad = [v for v in values if not v[-1]]
    # Hypothesis favours the ends of a range: a middle residue is a fair one-in-odds.
    return draw(st.sampled_from(bad if bad and draw(st.integers(0, 10**6)) % odds == 3 else good))


@dataclass(frozen=True)
class Vec:
    """A per-channel setting and what the documented table says about it."""

    value: Any
    length: Optional[int]  # None: refused whatever the channel count (wrong type)
    finite_nonneg: bool = True  # moving statistics: fit for prediction


def vectors(draw: st.DrawFn, channels: int, moving_var: bool = False, odds: int = 6) -> Vec:
    kind = pick(draw, [("ok", True), ("list", True), ("ints", True), ("big-endian", True), ("wrong-length", False),
                       ("strings", False), ("bools", False), ("masked", False), ("nan", False), ("negative", False),
                       ("inf", False)], odds)[0]
    v = np.round(np.array(draw(st.lists(st.floats(0.1, 4.0), min_size=channels, max_size=channels))), 3)
    if kind == "list":
        return Vec(v.tolist(), channels)
    if kind == "ints":
        return Vec(np.arange(1, channels + 1), channels)
    if kind == "big-endian":
        return Vec(v.astype(">f8"), channels)
    if kind == "wrong-length":
        return Vec(np.ones(channels + 1), channels + 1)
    if kind == "strings":
        return Vec(np.array(["a"] * channels), None)
    if kind == "bools":
        return Vec(np.ones(channels, dtype=bool), None)
    if kind == "masked":
        return Vec(np.ma.masked_array(v, mask=np.zeros(channels, bool)), None)
    if kind in ("nan", "negative", "inf"):
        bad = {"nan": np.nan, "negative": -1.0, "inf": np.inf}[kind]
        v[0] = bad
        return Vec(v, channels, finite_nonneg=kind == "negative" and not moving_var)
    return Vec(v, channels)


RHO = [(0.9, True), (0.0, True), (1.0, True), (0.5, True), (fractions.Fraction(1, 3), True), (np.float32(0.25), True),
       (1, True), (np.array(0.75), True), ("0.5", False), (True, False), (decimal.Decimal("0.5"), False),
       (1.5, False), (math.nan, False), (None, False), ([0.5], False)]
EPSILON = [(1e-8, True), (1e-5, True), (0.1, True), (1, True), (1e-300, True), (fractions.Fraction(1, 1000), True),
           (0.0, False), (-1e-5, False), (math.inf, False), (math.nan, False), ("1e-5", False), (True, False)]
FLAGS = [(True, True), (False, True), (np.bool_(True), True), ("yes", False), (1, False), (None, False)]


@dataclass
class Batch:
    """A generated batch as given to the layer, and what the model knows of it."""

    given: Any  # what is passed as x (or dout)
    data: np.ndarray  # converted as documented: the compute dtype, native byte order
    ndim_ok: bool
    out: Any = None
    out_ok: bool = True


@st.composite
def batches(draw: st.DrawFn, channels: int, like: Optional[np.ndarray] = None) -> Batch:
    """A batch (or, with ``like``, a dout of that shape and dtype) across many magnitudes."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if like is not None:
        shape = like.shape if draw(st.integers(0, 9)) else like.shape[:-1] + (like.shape[-1] + 1,)
        dtype = like.dtype.str if draw(st.booleans()) else draw(st.sampled_from(["<f8", "<f4", ">f4", "<i8"]))
    else:
        four_d = draw(st.booleans())
        c = channels if draw(st.integers(0, 9)) else draw(st.sampled_from([channels + 1, 0]))
        n = draw(st.sampled_from([2, 3, 4, 6, 2, 3, 4, 6, 1, 0]))
        shape = (n, c) + ((draw(st.integers(0, 3)), draw(st.integers(1, 3))) if four_d else ())
        if not draw(st.integers(0, 19)):
            shape = shape[:2] + (2,)  # 3-D: refused
        dtype = draw(st.sampled_from(["<f8", "<f4", "<f4", ">f4", ">f8", "<f2", "<i8"]))
    kind = np.dtype(dtype)
    if kind.kind == "i":
        values = rng.integers(-10**6, 10**6, size=shape)
    else:
        top = {2: 4, 4: 38, 8: 300}[kind.itemsize]
        low = {2: -4, 4: -44, 8: -300}[kind.itemsize]
        loc = draw(st.sampled_from([0.0, 1.0, -1.0])) * 10.0 ** draw(st.integers(low, top))
        spread = 10.0 ** draw(st.integers(low, min(top, 170)))
        values = loc + spread * rng.standard_normal(shape)
        if values.ndim > 1 and values.shape[1] and draw(st.integers(0, 4)) == 0:
            values[:, 0] = loc  # a constant channel
        big = float(np.finfo(kind).max)
        values = np.clip(values, -big, big)
    given = np.asarray(values).astype(dtype)
    compute = np.float64 if kind.kind == "i" else (np.float32 if kind.itemsize <= 4 else np.float64)
    data = given.astype(compute)
    return Batch(given, data, len(shape) in (2, 4) and (len(shape) < 2 or shape[1] >= 1))


# ------------------------------------------------------------------------------------- the model
@dataclass
class Model:
    """What the layer's state must be, and each setting's label."""

    channels: int
    gamma: Vec
    beta: Vec
    rho: tuple
    epsilon: tuple
    flags: dict
    moving: list  # [Vec or None, Vec or None]
    start: tuple = (None, None)
    steps: int = 0
    last_x: Optional[np.ndarray] = None  # the converted training input
    last_eps: float = 0.0
    last_staged: bool = False
    seen: dict = field(default_factory=dict)


def settings_ok(m: Model, channels: int) -> bool:
    return (m.gamma.length == channels and m.beta.length == channels and m.rho[1] and m.epsilon[1]
            and all(ok for _, ok in m.flags.values()))


def staged_nodes_out_of_range(ref, x: np.ndarray, dout: np.ndarray, gamma: np.ndarray) -> bool:
    """Whether an exact node of the staged backward (graph.py's table) lies beyond float64's
    range, or its per-channel chain below it: the layer may then refuse."""
    n = x.size // x.shape[1]
    d, x_mu = np.abs(by_channel(dout)).max(axis=1), np.abs(ref.x_std).max(axis=1) * ref.std
    a1 = np.abs(gamma) * d
    a2 = a1 / ref.std
    # grad_std_inv = sum(a1 * x_mu): exact value, or its rounding noise when that is larger
    noise = 2.0**-52 * np.abs(gamma) * np.abs(by_channel(dout)).sum(axis=1) * x_mu
    a3 = np.maximum(np.abs(gamma * ref.dgamma) * ref.std, noise)
    a4 = a3 / ref.std**2
    a5 = a4 / (2 * ref.std)
    a6 = a5 / n
    a7 = 2 * x_mu * a6
    products = [a1 * x_mu, d * np.abs(ref.x_std).max(axis=1), n * d]  # the terms the staged sums add
    nodes = [a1, a2, a3, a4, a5, a6, a7, n * (a2 + a7), *products]
    large = any(bool(np.any(~(v < 1e300))) for v in nodes)
    small = any(bool(np.any((v < 1e-290) & (a3 != 0))) for v in (a4, a5, a6))
    return large or small


class LayerMachine(RuleBasedStateMachine):
    """A BatchNormalization layer against its model."""

    examples = 0
    steps = 0
    outcomes: dict = {}

    def __init__(self) -> None:
        super().__init__()
        self.bn: Optional[BatchNormalization] = None
        self.m: Optional[Model] = None
        self.saved = (kernels.SMALL_BYTES, kernels.BLOCK_BYTES, _threads.get_num_threads())
        # The model's own arithmetic meets NaN and infinity (rebound settings): no warnings.
        self.quiet = np.errstate(all="ignore")
        self.quiet.__enter__()
        LayerMachine.examples += 1

    def teardown(self) -> None:
        kernels.SMALL_BYTES, kernels.BLOCK_BYTES, threads = self.saved
        _threads.set_num_threads(threads)
        self.quiet.__exit__(None, None, None)

    def count(self, what: str) -> None:
        LayerMachine.steps += 1
        LayerMachine.outcomes[what] = LayerMachine.outcomes.get(what, 0) + 1

    # ------------------------------------------------------------------ helpers
    def refused_or_done(self, call, valid: bool, what: str, may_refuse: bool = False):
        """Run ``call``: a valid call must succeed (unless ``may_refuse``), an invalid one must
        raise ValueError/TypeError and leave the state unchanged."""
        before = snapshot(self.bn)
        try:
            result = call()
        except (ValueError, TypeError) as err:
            assert not valid or may_refuse, f"{what}: a valid call raised {err!r}"
            assert_same_state(before, snapshot(self.bn))
            self.count(f"{what}: refused")
            return None
        assert valid, f"{what}: an invalid call was accepted"
        self.count(f"{what}: done")
        return result

    def layer_from(self, m: Model) -> BatchNormalization:
        kw = {name: value for name, (value, _) in m.flags.items()}
        mm, mv = m.moving
        return BatchNormalization(m.gamma.value, m.beta.value, rho=m.rho[0], epsilon=m.epsilon[0],
                                  moving_mean=None if mm is None else mm.value,
                                  moving_var=None if mv is None else mv.value, **kw)

    # ---------------------------------------------------------------- construction
    @initialize(channels=st.integers(1, 3), path=st.sampled_from(list(PATHS)), data=st.data())
    def construct_first(self, channels: int, path: str, data: st.DataObject) -> None:
        kernels.SMALL_BYTES, kernels.BLOCK_BYTES = PATHS[path]
        gamma = Vec(np.round(np.array(data.draw(st.lists(st.floats(-3, 3), min_size=channels, max_size=channels))), 3), channels)
        self.m = Model(channels, gamma, Vec(np.zeros(channels), channels), (0.9, True), (1e-8, True),
                       {"staged": (data.draw(st.booleans()), True), "unbiased_moving_var": (False, True),
                        "bias_correction": (data.draw(st.booleans()), True)}, [None, None])
        self.bn = self.layer_from(self.m)

    @rule(data=st.data())
    def construct(self, data: st.DataObject) -> None:
        wanted = data.draw(st.integers(1, 3))
        gamma = vectors(data.draw, wanted, odds=15)
        channels = gamma.length or wanted  # the layer takes its channel count from gamma
        m = Model(channels, gamma, vectors(data.draw, wanted, odds=15), pick(data.draw, RHO, 15),
                  pick(data.draw, EPSILON, 15),
                  {name: pick(data.draw, FLAGS, 15) for name in ("staged", "unbiased_moving_var", "bias_correction")},
                  [None, None])
        if data.draw(st.booleans()):
            m.moving = [vectors(data.draw, wanted, odds=15), vectors(data.draw, wanted, moving_var=True, odds=15)]
        given = [v for v in m.moving if v is not None]
        valid = (gamma.length is not None and settings_ok(m, channels)
                 and all(v.length == channels and v.finite_nonneg for v in given))
        try:
            bn = self.layer_from(m)
        except (ValueError, TypeError) as err:
            assert not valid, f"construction: valid settings raised {err!r}"
            self.count("construct: refused")
            return
        assert valid, "construction: invalid settings were accepted"
        self.count("construct: done")
        with pytest.raises(LayerStateError, match="training forward first"):  # nothing to differentiate yet
            bn.backward(np.ones((2, channels)))
        m.start = tuple(None if v is None else np.asarray(v.value, np.float64) for v in m.moving)
        self.bn, self.m = bn, m

    # ------------------------------------------------------------------- rebinding
    @rule(data=st.data(), name=st.sampled_from(["gamma", "beta", "moving_mean", "moving_var"]))
    def rebind_vector(self, data: st.DataObject, name: str) -> None:
        vec = vectors(data.draw, self.m.channels, moving_var=name == "moving_var")
        if name.startswith("moving") and not data.draw(st.integers(0, 5)):
            vec = None  # the moving statistics start again from zeros
        setattr(self.bn, name, None if vec is None else vec.value)
        if name.startswith("moving"):
            self.m.moving[name == "moving_var"] = vec
        else:
            setattr(self.m, name, vec)

    @rule(data=st.data(), name=st.sampled_from(["rho", "epsilon", "staged", "unbiased_moving_var", "bias_correction"]))
    def rebind_setting(self, data: st.DataObject, name: str) -> None:
        value = pick(data.draw, {"rho": RHO, "epsilon": EPSILON}.get(name, FLAGS))
        setattr(self.bn, name, value[0])
        if name in ("rho", "epsilon"):
            setattr(self.m, name, value)
        else:
            self.m.flags[name] = value

    @rule(n=st.sampled_from([1, 2, 3, 4, 1.5, True, 0, "2"]), path=st.sampled_from(list(PATHS)))
    def threads_and_path(self, n: Any, path: str) -> None:
        kernels.SMALL_BYTES, kernels.BLOCK_BYTES = PATHS[path]
        valid = type(n) is int and n >= 1
        try:
            _threads.set_num_threads(n)
        except (ValueError, TypeError):
            assert not valid
            return
        assert valid and _threads.get_num_threads() == n

    # ------------------------------------------------------------------- out buffers
    def with_out(self, data: st.DataObject, b: Batch, train: bool) -> Batch:
        mode = pick(data.draw, [("none", True), ("none", True), ("fresh", True), ("wrong-dtype", False), ("x", False),
                                ("shifted", False), ("kept", False)])[0]
        shape, dtype = b.data.shape, b.data.dtype
        if mode == "fresh":
            b.out = np.empty(shape, dtype)
        elif mode == "wrong-dtype":
            b.out, b.out_ok = np.empty(shape, np.float16), False
        elif mode == "x":  # refused: it is x, or of another dtype; unless both are empty
            b.out, b.out_ok = b.given, b.data.size == 0 and b.given.dtype == b.data.dtype
        elif mode == "shifted" and b.ndim_ok and len(shape) >= 2:
            buf = np.empty((shape[0] + 1,) + shape[1:], dtype)
            buf[:-1] = b.data
            b.given, b.data, b.out = buf[:-1], buf[:-1], buf[1:]
            b.out_ok = shape[0] < 2 or b.data.size == 0  # they share rows 1..N-1
        elif mode == "kept" and self.m.last_x is not None and self.m.last_x.shape == shape and self.m.last_x.dtype == dtype:
            b.out, b.out_ok = self.bn._cache.x, False
        return b

    # ---------------------------------------------------------------------- training
    @rule(data=st.data())
    def train(self, data: st.DataObject) -> None:
        m, bn = self.m, self.bn
        flag = pick(data.draw, [(True, True), (np.bool_(True), True), ("False", False), (1, False)])
        b = self.with_out(data, data.draw(batches(m.channels)), True)
        x = b.data
        channels = x.shape[1] if x.ndim > 1 else -1
        count = x.size // channels if channels > 0 else 0
        moving_ok = all(v is None or v.length == channels for v in m.moving)
        valid = (flag[1] and b.ndim_ok and channels >= 1 and settings_ok(m, channels) and count >= 2
                 and moving_ok and b.out_ok)
        ref, may_refuse = None, False
        if valid:
            eps = float(m.epsilon[0])
            try:
                ref = reference_training(x, np.asarray(m.gamma.value, np.float64), np.asarray(m.beta.value, np.float64), eps)
                variances = [exact_moments(c)[1] for c in by_channel(x)]
            except Unrepresentable:
                variances = [Fraction(LIMIT) * 2]
            large = max(variances) >= LIMIT or min(v + Fraction(eps) for v in variances) < Fraction(1) / Fraction(LIMIT)
            near = any(abs(float(v) / LIMIT - 1) < 1e-6 for v in variances if v < 4 * Fraction(LIMIT))
            valid, may_refuse = not large, near
        out = self.refused_or_done(lambda: bn.forward(b.given, train_flg=flag[0], out=b.out), valid, "train", may_refuse)
        if out is None:
            return
        gamma, beta = np.asarray(m.gamma.value, np.float64), np.asarray(m.beta.value, np.float64)
        assert out.dtype == x.dtype and (b.out is None or out is b.out)
        check_against_reference(ref, x, gamma, beta, out)
        self.check_moving_update(ref, x, count)
        m.last_x, m.last_eps, m.last_staged = x, float(m.epsilon[0]), bool(m.flags["staged"][0])
        assert bn.batch_size == count and bn.steps == m.steps

    def check_moving_update(self, ref, x: np.ndarray, count: int) -> None:
        m, bn = self.m, self.bn
        rho = float(m.rho[0])
        restart = m.moving[0] is None or m.moving[1] is None
        old = [np.zeros(m.channels) if restart else np.asarray(v.value, np.float64) for v in m.moving]
        batch_var = ref.var * count / (count - 1) if m.flags["unbiased_moving_var"][0] else ref.var
        # How far the layer's batch statistics may be from the exact ones: float32 sums in
        # blocks, or float64's own rounding of the mean (|x| / std times an ulp).
        # (A float64 mean is within an ulp or so of |x|; its error adds to the variance
        # only below a millionth, as the layer takes a mean again past that.)
        if x.dtype == np.float32:
            err = [4e-6 * np.sqrt(ref.var), 1e-5 * ref.var]
        else:
            err = [1e-12 * np.sqrt(ref.var) + 1e-14 * channel_max(x), 1e-11 * ref.var]
        if m.flags["unbiased_moving_var"][0]:
            err[1] = err[1] * count / (count - 1)
        for k, (new, stat) in enumerate(((bn.moving_mean, ref.mean), (bn.moving_var, batch_var))):
            want = rho * old[k] + (1 - rho) * stat
            tol = (0.0 if rho == 1 else (1 - rho) * err[k]) + 1e-14 * (np.abs(rho * old[k]) + np.abs((1 - rho) * stat)) + 1e-300
            with np.errstate(invalid="ignore"):
                bad = ~((new == want) | (np.abs(new - want) <= tol) | (np.isnan(new) & np.isnan(want)))
            assert not np.any(bad), f"moving statistic {k}: {new} != {want} (tolerance {tol}; rho {rho}, old {old[k]}, batch {stat}, err {err[k]})"
        if restart or m.start[0] is None or m.start[1] is None:  # the averages start from here
            m.start, m.steps = (old[0].copy(), old[1].copy()), 0
        m.steps += 1
        m.moving = [Vec(bn.moving_mean.copy(), m.channels, True), Vec(bn.moving_var.copy(), m.channels, True)]
        for k, vec in enumerate(m.moving):
            finite = bool(np.all(np.isfinite(vec.value))) and (k == 0 or bool(np.all(vec.value >= 0)))
            m.moving[k] = Vec(vec.value, m.channels, finite)

    # -------------------------------------------------------------------- prediction
    @rule(data=st.data())
    def predict(self, data: st.DataObject) -> None:
        m, bn = self.m, self.bn
        flag = pick(data.draw, [(False, True), (np.bool_(False), True), ("True", False), (0, False)])
        b = self.with_out(data, data.draw(batches(m.channels)), False)
        x = b.data
        channels = x.shape[1] if x.ndim > 1 else -1
        have = m.moving[0] is not None and m.moving[1] is not None
        stats_ok = have and all(v.length == channels and v.finite_nonneg for v in m.moving)
        valid = flag[1] and b.ndim_ok and channels >= 1 and settings_ok(m, channels) and stats_ok and b.out_ok
        mean = var = None
        if valid:
            mean, var = (np.asarray(v.value, np.float64) for v in m.moving)
            rho = float(m.rho[0])
            weight = rho**m.steps
            if m.flags["bias_correction"][0] and m.steps and weight != 1.0:
                if m.start[0] is None or m.start[0].shape != mean.shape:
                    valid = False
                else:
                    mean = (mean - weight * m.start[0]) / (1 - weight)
                    var = np.maximum((var - weight * m.start[1]) / (1 - weight), 0.0)
            if valid and not np.all(np.isfinite(var + float(m.epsilon[0]))):
                valid = False  # var + epsilon overflows
        only_state = not have and flag[1] and b.ndim_ok and channels >= 1 and settings_ok(m, channels) and b.out_ok
        if only_state:
            before = snapshot(bn)
            with pytest.raises(LayerStateError):
                bn.forward(b.given, train_flg=flag[0], out=b.out)
            assert_same_state(before, snapshot(bn))
            self.count("predict: refused (no moving statistics)")
            return
        out = self.refused_or_done(lambda: bn.forward(b.given, train_flg=flag[0], out=b.out), valid, "predict")
        if out is None:
            return
        assert out.dtype == x.dtype and out.shape == x.shape
        gamma, beta = np.asarray(m.gamma.value, np.float64), np.asarray(m.beta.value, np.float64)
        want = reference_prediction(x, gamma, beta, mean, var, float(m.epsilon[0]))
        std = np.sqrt(var + float(m.epsilon[0]))
        size = np.abs(gamma) * (channel_max(x) + np.abs(mean)) / std + np.abs(beta)
        assert_close(out, want, tolerance(x.dtype, size), "prediction", x.dtype)

    # ---------------------------------------------------------------------- backward
    @precondition(lambda self: self.m.last_x is not None)
    @rule(data=st.data())
    def backward(self, data: st.DataObject) -> None:
        m, bn = self.m, self.bn
        x = m.last_x
        b = data.draw(batches(m.channels, like=x))
        mode = pick(data.draw, [("none", True), ("fresh", True), ("dout", False), ("kept", False)])[0]
        out, out_ok = {"none": (None, True), "fresh": (np.empty(x.shape, x.dtype), True),
                       "dout": (b.given, False), "kept": (bn._cache.x, False)}[mode]
        with np.errstate(over="ignore"):
            grad = b.given.astype(x.dtype)
        fits = bool(np.all(np.isfinite(grad)))  # a float64 dout beyond float32's range is refused
        valid = b.given.shape == x.shape and settings_ok(m, x.shape[1]) and out_ok and fits
        ref, may_refuse = None, False
        if valid:
            gamma = np.asarray(m.gamma.value, np.float64)
            try:
                ref = reference_training(x, gamma, np.zeros(x.shape[1]), m.last_eps, grad)
                sums = [abs(ref.dbeta), abs(ref.dgamma) * ref.std, abs(ref.dgamma * gamma) * ref.std]
                may_refuse = max(float(np.max(s)) for s in sums) > 1e300 or float(np.max(np.abs(grad))) > 1e290
                if m.last_staged:  # a staged node may not fit in float64 where dx does
                    may_refuse |= staged_nodes_out_of_range(ref, x, grad, gamma)
                # dx's terms beyond float64, or float32 by more than float64's precision
                n = x.size // x.shape[1]
                terms = np.abs(gamma) / ref.std * (np.abs(ref.dbeta) / n + np.abs(ref.dgamma) / np.sqrt(n))
                may_refuse |= bool(np.any(~(terms < (2.0**170 if x.dtype == np.float32 else 1e300))))
            except Unrepresentable:
                may_refuse = True
        dx = self.refused_or_done(lambda: bn.backward(b.given, out=out), valid, "backward", may_refuse)
        if dx is None:
            return
        assert dx.dtype == bn.dgamma.dtype == x.dtype and (out is None or dx is out)
        assert ref is not None
        check_against_reference(ref, x, gamma, np.zeros(x.shape[1]), None, grad, dx, bn.dgamma, bn.dbeta)

    @invariant()
    def inputs_of_the_last_training_are_kept(self) -> None:
        if self.m is not None and self.m.last_x is not None:
            assert self.bn._cache is not None and self.bn._cache.x.shape == self.m.last_x.shape


BOUNDED = settings(max_examples=300, stateful_step_count=40, deadline=None, derandomize=True,
                   suppress_health_check=list(HealthCheck), database=None)


def test_layer_state_machine() -> None:
    """The bounded run of ``make test``: a fixed seed (derandomized), 300 sequences of up to 40 steps
    (30 under ``make mutation``, where every surviving mutant runs it)."""
    mutation = bool(os.environ.get("MUTANT_UNDER_TEST"))
    run_state_machine_as_test(LayerMachine, settings=settings(BOUNDED, max_examples=30) if mutation else BOUNDED)


@pytest.mark.long
def test_layer_state_machine_long(request) -> None:
    """The long run for the closing note: ``pytest -m long tests/test_stateful.py -s``."""
    if "long" not in (request.config.getoption("markexpr") or "") or "not long" in request.config.getoption("markexpr"):
        pytest.skip("the long stateful run: select it with -m long")
    examples = int(os.environ.get("BNLIT_STATEFUL_EXAMPLES", "3000"))
    LayerMachine.examples, LayerMachine.steps, LayerMachine.outcomes = 0, 0, {}
    run_state_machine_as_test(LayerMachine, settings=settings(
        BOUNDED, max_examples=examples, stateful_step_count=50, derandomize=False))
    summary = ", ".join(f"{k} {v}" for k, v in sorted(LayerMachine.outcomes.items()))
    print(f"\nstateful long run: {LayerMachine.examples} sequences, {LayerMachine.steps} checked calls: {summary}")
