"""ConstraintSpace: validation, feasibility, the exact projection, sampling, BoTorch conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from allocator import ConstraintSpace, InfeasibleConstraintError, InputError, maximin_order

# ---------------------------------------------------------------------------- strategies


@st.composite
def spaces(draw: st.DrawFn, max_dim: int = 8, allow_pinned: bool = True) -> ConstraintSpace:
    """Random feasible spaces: weights over two orders of magnitude, per-block bounds, some pinned blocks,
    targets anywhere in the reachable range including its ends."""
    d = draw(st.integers(1, max_dim))
    w = draw(st.lists(st.floats(0.05, 20.0), min_size=d, max_size=d))
    lo = np.array(draw(st.lists(st.floats(0.0, 0.6), min_size=d, max_size=d)))
    width = np.array(draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-4, 0.6)), min_size=d, max_size=d)))
    if not allow_pinned:
        width = np.maximum(width, 0.05)
    hi = np.minimum(lo + width, 0.99)
    W = np.asarray(w)
    t_lo, t_hi = float(W @ lo / W.sum()), float(W @ hi / W.sum())
    where = draw(st.sampled_from(["inside", "low", "high"]))
    frac = {"inside": draw(st.floats(0.0, 1.0)), "low": 0.0, "high": 1.0}[where]
    t = t_lo + frac * (t_hi - t_lo)
    assume(1e-4 < t < 1.0)
    return ConstraintSpace(weights=w, target=t, lower=lo, upper=hi)


def kkt_certificate(space: ConstraintSpace, y: np.ndarray, s: np.ndarray, tol: float = 1e-8) -> bool:
    """True if ``s`` satisfies the KKT conditions of ``min ‖s − y‖²`` on the polytope (so it is THE
    projection, the problem being strictly convex): some λ has ``s_b = y_b − λ w_b`` on free blocks,
    ``y_b − λ w_b ≤ l_b`` at lower bounds and ``≥ u_b`` at upper bounds."""
    if space.is_singleton:
        return True  # one feasible point (its feasibility is checked separately); no multiplier needed
    w, lo, hi = space.weight_array(), space.lower_array(), space.upper_array()
    movable = hi - lo > 1e-12
    free = (s > lo + 1e-12) & (s < hi - 1e-12)
    if free.any():
        lams = (y[free] - s[free]) / w[free]
        lam = float(np.median(lams))
        if np.max(np.abs(lams - lam)) > tol * max(1.0, abs(lam)):
            return False
        z = y - lam * w
        at_lo = (s <= lo + 1e-12) & movable
        at_hi = (s >= hi - 1e-12) & movable
        return bool(
            np.all(z[at_lo & ~at_hi] <= lo[at_lo & ~at_hi] + tol)
            and np.all(z[at_hi & ~at_lo] >= hi[at_hi & ~at_lo] - tol)
        )
    # Every block at a bound: some λ must fit all the inequalities at once.
    lower_lams = [(y[b] - hi[b]) / w[b] for b in range(space.dim) if movable[b] and s[b] >= hi[b] - 1e-12]
    upper_lams = [(y[b] - lo[b]) / w[b] for b in range(space.dim) if movable[b] and s[b] <= lo[b] + 1e-12]
    return max(lower_lams, default=-math.inf) <= min(upper_lams, default=math.inf) + tol


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"weights": [], "target": 0.5}, "`weights`"),
        ({"weights": [[1.0, 2.0]], "target": 0.5}, "`weights`"),
        ({"weights": [1.0, 0.0], "target": 0.5}, "`weights`"),
        ({"weights": [1.0, -2.0], "target": 0.5}, "`weights`"),
        ({"weights": [1.0, math.inf], "target": 0.5}, "`weights`"),
        ({"weights": [1.0, math.nan], "target": 0.5}, "`weights`"),
        ({"weights": [1.0, 1.0], "target": 0.0}, "`target`"),
        ({"weights": [1.0, 1.0], "target": 1.0}, "`target`"),
        ({"weights": [1.0, 1.0], "target": math.nan}, "`target`"),
        ({"weights": [1.0, 1.0], "target": "half"}, "`target`"),
        ({"weights": [1.0, 1.0], "target": 0.5, "lower": [0.1, 0.2, 0.3]}, "`lower`"),
        ({"weights": [1.0, 1.0], "target": 0.5, "upper": [0.9]}, "`upper`"),
        ({"weights": [1.0, 1.0], "target": 0.5, "lower": -0.1}, "`lower`"),
        ({"weights": [1.0, 1.0], "target": 0.5, "upper": 1.0}, "`upper`"),
        ({"weights": [1.0, 1.0], "target": 0.5, "upper": [0.9, math.nan]}, "`upper`"),
        ({"weights": [1.0, 1.0], "target": 0.5, "lower": [0.6, 0.0], "upper": [0.5, 0.9]}, "`lower`"),
    ],
)
def test_invalid_parameters_name_the_parameter_in_one_sentence(kwargs: dict, name: str) -> None:
    with pytest.raises(InputError) as info:
        ConstraintSpace(**kwargs)
    message = str(info.value)
    assert name in message
    assert message.endswith(".") and ". " not in message.rstrip(".")


@given(space=spaces(), outside=st.floats(1e-6, 0.3), side=st.sampled_from(["below", "above"]))
@settings(max_examples=150, deadline=None)
def test_infeasible_target_raises_with_the_reachable_range(space: ConstraintSpace, outside: float, side: str) -> None:
    lo_t, hi_t = space.reachable_range()
    t = lo_t - outside if side == "below" else hi_t + outside
    assume(0.0 < t < 1.0)
    with pytest.raises(InfeasibleConstraintError) as info:
        ConstraintSpace(weights=space.weights, target=t, lower=space.lower, upper=space.upper)
    message = str(info.value)
    assert f"[{lo_t:.6g}, {hi_t:.6g}]" in message
    assert isinstance(info.value, ValueError)


def test_basic_views() -> None:
    space = ConstraintSpace(weights=[1.0, 3.0, 2.0], target=0.5, lower=[0.0, 0.1, 0.2], upper=0.9)
    assert space.dim == 3
    assert space.param_names == ("block_0", "block_1", "block_2")
    np.testing.assert_array_equal(space.lower_array(), [0.0, 0.1, 0.2])
    np.testing.assert_array_equal(space.upper_array(), [0.9, 0.9, 0.9])
    assert space.model_sparsity([0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert space.model_sparsity([0.0, 1.0, 0.0]) == pytest.approx(0.5)
    assert space.contains([0.5, 0.5, 0.5])
    assert not space.contains([0.6, 0.5, 0.5])
    assert not space.contains([0.95, 0.35, 0.55])  # on the equality, above block 0's bound
    assert hash(space) == hash(ConstraintSpace(weights=[1, 3, 2], target=0.5, lower=[0, 0.1, 0.2], upper=0.9))
    with pytest.raises(InputError, match="`vector`"):
        space.model_sparsity([0.5, 0.5])


# ---------------------------------------------------------------------------- projection


@given(space=spaces(), data=st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_projection_is_feasible_idempotent_and_optimal(space: ConstraintSpace, data: st.DataObject) -> None:
    y = np.array(data.draw(st.lists(st.floats(-2.0, 3.0), min_size=space.dim, max_size=space.dim)))
    s = space.project(y)
    w = space.weight_array()
    # Bounds exactly, equality within 1e-9 relative.
    assert np.all(s >= space.lower_array()) and np.all(s <= space.upper_array())
    assert abs(float(w @ s) - space.rhs) <= 1e-9 * space.rhs
    # Idempotent.
    np.testing.assert_allclose(space.project(s), s, rtol=0, atol=1e-12)
    # Optimal: the KKT conditions certify it is the nearest feasible point.
    assert kkt_certificate(space, y, s)
    # The torch version agrees.
    st_ = space.project_torch(torch.tensor(y, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(st_, s, rtol=0, atol=1e-10)


@given(space=spaces(max_dim=5, allow_pinned=False), data=st.data())
@settings(max_examples=60, deadline=None)
def test_projection_is_the_nearest_point_by_brute_force(space: ConstraintSpace, data: st.DataObject) -> None:
    """A general-purpose QP (SLSQP, tight tolerance) finds no feasible point nearer than the projection."""
    y = np.array(data.draw(st.lists(st.floats(-1.0, 2.0), min_size=space.dim, max_size=space.dim)))
    s = space.project(y)
    w = space.weight_array()
    res = minimize(
        lambda x: float(((x - y) ** 2).sum()),
        x0=space.center(),
        jac=lambda x: 2 * (x - y),
        bounds=list(zip(space.lower, space.upper, strict=True)),
        constraints=[{"type": "eq", "fun": lambda x: float(w @ x) - space.rhs, "jac": lambda x: w}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    qp = space.project(res.x)  # remove SLSQP's equality slack before comparing distances
    assert np.linalg.norm(s - y) <= np.linalg.norm(qp - y) + 1e-7


def test_projection_of_many_rows_and_batched_torch() -> None:
    space = ConstraintSpace(weights=np.linspace(1, 3, 10), target=0.4, lower=0.05, upper=0.8)
    rng = np.random.default_rng(0)
    Y = rng.normal(0.4, 0.4, size=(4, 3, 10))
    S = space.project(Y)
    assert S.shape == Y.shape
    assert all(space.contains(s, tol=1e-12) for s in S.reshape(-1, 10))
    T = space.project_torch(torch.tensor(Y)).numpy()
    np.testing.assert_allclose(T, S, atol=1e-10)


def test_torch_projection_gradient_is_exact_on_the_active_set() -> None:
    space = ConstraintSpace(weights=[1.0, 2.0, 3.0, 1.5], target=0.4, lower=0.0, upper=0.9)
    y = torch.tensor([[0.2, 0.5, 0.35, 0.7]], dtype=torch.float64, requires_grad=True)  # interior: no clipping
    assert torch.autograd.gradcheck(space.project_torch, (y,))
    # Inside the box the map is the orthogonal projection onto the hyperplane: J = I − w wᵀ/‖w‖².
    w = torch.tensor(space.weights, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: space.project_torch(v), y.detach()[0])
    np.testing.assert_allclose(J.numpy(), (torch.eye(4) - torch.outer(w, w) / (w @ w)).numpy(), atol=1e-12)
    # A clipped block gets no gradient, and the others still move along the equality.
    y2 = torch.tensor([[-0.5, 0.5, 0.45, 0.7]], dtype=torch.float64, requires_grad=True)
    out = space.project_torch(y2)
    assert out[0, 0] == 0.0
    assert torch.autograd.gradcheck(space.project_torch, (y2,))


# ---------------------------------------------------------------------------- degenerate cases


def test_one_block_has_a_single_point() -> None:
    space = ConstraintSpace(weights=[5.0], target=0.3, lower=0.0, upper=0.9)
    assert space.is_singleton
    np.testing.assert_allclose(space.project([0.8]), [0.3])
    np.testing.assert_allclose(space.sample(3, seed=0), [[0.3]] * 3)
    with pytest.raises(InfeasibleConstraintError, match=r"\[0\.4, 0\.4\]"):
        ConstraintSpace(weights=[5.0], target=0.3, lower=0.4, upper=0.4)


def test_pinned_blocks_stay_pinned() -> None:
    space = ConstraintSpace(weights=[1, 1, 2, 1], target=0.5, lower=[0.0, 0.6, 0.0, 0.0], upper=[0.9, 0.6, 0.9, 0.9])
    s = space.project([0.9, 0.0, 0.9, 0.9])
    assert s[1] == 0.6
    assert space.contains(s, tol=1e-12)
    pts = space.sample(6, seed=1)
    assert np.all(pts[:, 1] == 0.6)
    assert all(space.contains(p) for p in pts)


@pytest.mark.parametrize("end", ["low", "high"])
def test_target_at_the_reachable_boundary(end: str) -> None:
    lo, hi = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7])
    w = np.array([1.0, 2.0, 3.0])
    t = float(w @ (lo if end == "low" else hi) / w.sum())
    space = ConstraintSpace(weights=w, target=t, lower=lo, upper=hi)
    expected = lo if end == "low" else hi
    assert space.is_singleton
    np.testing.assert_allclose(space.project([0.3, 0.3, 0.3]), expected)
    np.testing.assert_allclose(space.sample(2, seed=0), [expected, expected])
    np.testing.assert_allclose(space.uniform_vector(), expected)


# ---------------------------------------------------------------------------- sampling


@given(space=spaces(max_dim=6), seed=st.integers(0, 2**31 - 2))
@settings(max_examples=15, deadline=None)
def test_samples_are_feasible_and_deterministic(space: ConstraintSpace, seed: int) -> None:
    pts = space.sample(5, seed=seed, pool_size=64)
    assert pts.shape == (5, space.dim)
    assert all(space.contains(p, tol=1e-9) for p in pts)
    np.testing.assert_array_equal(pts, space.sample(5, seed=seed, pool_size=64))


def test_samples_are_space_filling() -> None:
    """Maximin selection spreads points better than the same number of plain hit-and-run draws."""
    space = ConstraintSpace(weights=np.ones(10), target=0.5)
    design = space.normalize(space.sample(12, seed=0))
    plain = space.normalize(space.polytope_pool(seed=1, size=12))

    def min_dist(x: np.ndarray) -> float:
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return float(d[np.triu_indices(len(x), 1)].min())

    assert min_dist(design) > 1.2 * min_dist(plain)


def test_sample_continues_from_start_points() -> None:
    space = ConstraintSpace(weights=[1, 2, 3, 4], target=0.4)
    u = space.uniform_vector()[None, :]
    pts = space.sample(4, seed=3, start=u)
    assert not np.any(np.all(np.isclose(pts, u), axis=1))
    order = maximin_order(np.array([[0.0], [1.0], [0.5], [0.9]]), np.array([[0.0]]), 2)
    assert list(order) == [1, 2]


# ---------------------------------------------------------------------------- BoTorch conversion


def test_equality_constraints_in_raw_and_normalised_space() -> None:
    space = ConstraintSpace(weights=[1.0, 2.0, 3.0], target=0.4, lower=[0.0, 0.1, 0.3], upper=[0.9, 0.1, 0.8])
    s = space.sample(1, seed=0)[0]
    ((idx, coef, rhs),) = space.botorch_equality_constraints(normalized=False)
    assert float((coef * torch.tensor(s)[idx]).sum()) == pytest.approx(rhs)
    ((idx, coef, rhs),) = space.botorch_equality_constraints(normalized=True)
    assert 1 not in idx.tolist()  # the pinned block has a zero coefficient and is left out
    z = torch.tensor(space.normalize(s))
    # Σ w_b (u_b − l_b) z_b = t·Σw − Σ w_b l_b
    assert float((coef * z[idx]).sum()) == pytest.approx(rhs)
    assert rhs == pytest.approx(0.4 * 6 - (0.0 + 0.2 + 0.9))
    b = space.botorch_bounds()
    assert b.shape == (2, 3) and b.dtype == torch.float64


def test_a_design_without_an_anchor_has_distinct_points():
    """Regression: without ``start`` the maximin order once revisited its own picks (duplicate design points)."""
    for weights in ([2654208.0] * 30, [1.0] * 30):
        space = ConstraintSpace(weights=weights, target=0.6, lower=0.0, upper=0.9)
        points = space.sample(40, seed=0)
        assert len({tuple(np.round(p, 9)) for p in points}) == 40
