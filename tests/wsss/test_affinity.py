"""wsss.affinity (PSA's affinity labels, loss and random walk) against the loop-level
restatements of bench/reference_refine.py and bench/reference.py, on configurations other
than the fixture's: radii 3-6, odd and non-square grids, grids too small for the radius,
crops reaching outside the image, several class counts, betas, logt and both background
rules; the dense and the sparse walk; dtypes and half precision."""
import numpy as np
import pytest
import torch

from bench.reference import (literal_affinity_labels, literal_label_map, literal_pairs,
                             literal_random_walk)
from bench.reference_refine import (ref_affinities, ref_affinity_labels, ref_affinity_loss,
                                    ref_crop_window, ref_dense_affinity, ref_label_map,
                                    ref_pair_indices, ref_pair_offsets, ref_random_walk,
                                    ref_rw_background)
from wsss.affinity import (affinity_label_map, affinity_labels, affinity_loss, crop_window,
                           dense_affinity, pair_affinities, pair_indices, pair_offsets,
                           random_walk, rw_background, sparse_affinity)


def grid_pairs(h, w, r):
    return len(pair_offsets(r)), max(h - r + 1, 0) * max(w - 2 * r + 2, 0)


# ------------------------------------------------------------------------------ pairs
@pytest.mark.parametrize("r,K", [(2, 4), (3, 12), (4, 22), (5, 34), (6, 54)])
def test_pair_offsets_count_and_order(r, K):
    offs = pair_offsets(r)
    assert offs == ref_pair_offsets(r) and len(offs) == K
    assert all(dy > 0 or dx > 0 for dy, dx in offs)        # every partner comes later


@pytest.mark.parametrize("h,w,r", [(9, 13, 5), (8, 8, 4), (6, 11, 3), (13, 7, 3), (5, 9, 5),
                                   (4, 20, 5), (12, 8, 5)])
def test_pair_indices_match_loops(h, w, r):
    i_from, i_to = pair_indices(h, w, r)
    froms, tos = ref_pair_indices(h, w, r)
    assert i_from.dtype == i_to.dtype == torch.int64
    assert i_to.numel() == len(pair_offsets(r)) * i_from.numel()
    np.testing.assert_array_equal(i_from.numpy(), froms)
    np.testing.assert_array_equal(i_to.numpy(), tos)


@pytest.mark.parametrize("top,left", [(3, 5), (-4, -2), (-10, 7), (0, 0), (20, 20)])
def test_crop_window_matches_pixel_loop(top, left):
    x = torch.arange(3 * 11 * 14, dtype=torch.float64).reshape(3, 11, 14)
    got = crop_window(x, 9, top, left, fill=-1.0)
    assert got.shape == (3, 9, 9) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), ref_crop_window(x.numpy(), 9, top, left, -1.0))
    labels = torch.randint(0, 4, (11, 14))
    z = crop_window(labels, 12, top, left, fill=255)
    assert z.dtype == torch.int64
    np.testing.assert_array_equal(z.numpy(), ref_crop_window(labels.numpy(), 12, top, left, 255))


# --------------------------------------------------------------------------- label map
@pytest.mark.parametrize("S,n,stride", [(24, 1, 8), (29, 2, 8), (33, 4, 8), (20, 3, 4)])
def test_label_map_matches_block_loops(S, n, stride):
    g = np.random.default_rng(S * 10 + n)
    la = g.random((n + 1, S, S)) ** 4
    ha = g.random((n + 1, S, S)) ** 4
    la[:, -stride:, :stride] = 0                            # a cell without scores
    ha[:, -stride:, :stride] = 0
    la[0, :stride, :stride] = 0                             # a confident foreground cell
    ha[0, :stride, :stride] = 0
    got = affinity_label_map(torch.from_numpy(la), torch.from_numpy(ha), stride=stride)
    want = ref_label_map(la, ha, stride)
    assert got.dtype == torch.int64 and got.shape == want.shape == (-(-S // stride),) * 2
    np.testing.assert_array_equal(got.numpy(), want)
    assert got[-1, 0] == 255 and got[0, 0] != 0
    assert set(np.unique(want)) <= set(range(n + 1)) | {255}


def test_label_map_on_float32_crops_of_a_dict():
    """As the training set builds it: float32 score dicts cropped with negative origins
    (zero outside the image -> 255 there)."""
    g = np.random.default_rng(1)
    la = g.random((3, 21, 26)).astype(np.float32)
    ha = g.random((3, 21, 26)).astype(np.float32)
    crops = [crop_window(torch.from_numpy(t), 40, -5, -9) for t in (la, ha)]
    got = affinity_label_map(*crops)
    want = ref_label_map(*(c.numpy() for c in crops))
    np.testing.assert_array_equal(got.numpy(), want)
    assert (got[-1] == 255).all() and (got[:, 0] == 255).all()     # cells outside the image


@pytest.mark.parametrize("h,w,r,B", [(9, 11, 5, 2), (7, 7, 4, 1), (6, 10, 3, 3), (12, 9, 5, 1)])
def test_affinity_labels_match_pair_loops(h, w, r, B):
    g = np.random.default_rng(h * w + r)
    y = g.choice([0, 1, 2, 5, 255], size=(B, h, w), p=[0.35, 0.25, 0.15, 0.1, 0.15])
    got = affinity_labels(torch.from_numpy(y), r)
    K, P = grid_pairs(h, w, r)
    for b in range(B):
        for t, want in zip(got, ref_affinity_labels(y[b], r)):
            assert t.shape == (B, K, P) and t.dtype == torch.float32
            np.testing.assert_array_equal(t[b].numpy(), want)
    bg, fg, neg = got
    assert float((bg * fg + bg * neg + fg * neg).sum()) == 0          # disjoint kinds


# ------------------------------------------------------------------------ affinity loss
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_affinity_loss_matches_element_loop(dtype):
    g = torch.Generator().manual_seed(3)
    aff = torch.rand(2, 12, 15, generator=g, dtype=torch.float64)
    aff[0, 0, :3] = torch.tensor([0.0, 1.0, 1.0 - 1e-9], dtype=torch.float64)   # extremes
    labels = [(torch.rand(2, 12, 15, generator=g) > q).float() for q in (0.7, 0.8, 0.5)]
    L = affinity_loss(aff.to(dtype), *labels)
    want = ref_affinity_loss(aff.numpy(), *(t.numpy() for t in labels))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for k in ("bg", "fg", "neg", "total"):
        assert L[k].dtype == dtype and L[k].dim() == 0
        assert float(L[k]) == pytest.approx(want[k], rel=tol)


def test_affinity_loss_without_positives_is_zero_and_differentiable():
    aff = torch.rand(1, 12, 6, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, 12, 6)
    L = affinity_loss(aff, zero, zero, torch.ones(1, 12, 6))
    assert float(L["bg"].detach()) == 0.0 and float(L["fg"].detach()) == 0.0
    L["total"].backward()
    assert torch.isfinite(aff.grad).all() and (aff.grad > 0).all()   # neg pushes aff down


# ---------------------------------------------------------------------- affinity matrix
@pytest.mark.parametrize("h,w,r", [(7, 10, 4), (9, 9, 5), (6, 8, 3), (3, 12, 5)])
def test_dense_and_sparse_affinity_match_pair_loops(h, w, r):
    g = torch.Generator().manual_seed(h + w)
    K, P = grid_pairs(h, w, r)
    aff = torch.rand(1, K, P, generator=g, dtype=torch.float64)
    want = ref_dense_affinity(aff.numpy(), h, w, r)
    M = dense_affinity(aff, h, w, r)
    assert M.shape == (h * w, h * w) and M.dtype == torch.float64
    np.testing.assert_array_equal(M.numpy(), want)
    S = sparse_affinity(aff[0], h, w, r)
    assert S.is_sparse and S._nnz() <= (2 * K + 1) * h * w
    np.testing.assert_array_equal(S.to_dense().numpy(), want)


# -------------------------------------------------------------------------- random walk
@pytest.mark.parametrize("n,mode,thr,alpha", [(2, "threshold", 0.39, 16), (3, "power", 0.39, 16),
                                              (1, "power", 0.2, 4.5), (0, "power", 0.39, 16),
                                              (0, "threshold", 0.25, 16)])
def test_rw_background_rules(n, mode, thr, alpha):
    g = torch.Generator().manual_seed(n)
    cams = torch.rand(n, 9, 11, generator=g, dtype=torch.float64)
    got = rw_background(cams, mode=mode, threshold=thr, alpha=alpha)
    assert got.shape == (9, 11) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref_rw_background(cams.numpy(), mode, thr, alpha),
                               rtol=1e-13)


def test_rw_background_rejects_unknown_rule():
    with pytest.raises(ValueError, match="threshold"):
        rw_background(torch.rand(1, 4, 4), mode="mean")


def walk_inputs(H, W, r, n, mode, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h, w = -(-H // 8), -(-W // 8)
    aff = torch.rand(grid_pairs(h, w, r), generator=g, dtype=dtype) ** 0.3
    cams = torch.rand(n, H, W, generator=g, dtype=dtype) ** 2
    bg = rw_background(cams, mode=mode, threshold=0.3, alpha=16)
    return aff, torch.cat([bg[None], cams]), h, w


@pytest.mark.parametrize("H,W,r,beta,logt,n,mode", [
    (41, 75, 4, 8, 6, 2, "threshold"), (56, 48, 5, 8, 8, 1, "power"),
    (30, 71, 3, 2, 3, 3, "threshold"), (47, 65, 5, 4.5, 5, 0, "power"),
    (64, 88, 5, 8, 0, 2, "power")])
def test_random_walk_matches_the_reference_code(H, W, r, beta, logt, n, mode):
    aff, scores, h, w = walk_inputs(H, W, r, n, mode, seed=H + W)
    M = dense_affinity(aff, h, w, r)
    want = ref_random_walk(scores, M, beta, logt)
    for m in (M, sparse_affinity(aff, h, w, r)):
        got = random_walk(scores, m, beta=beta, logt=logt)
        assert got.shape == (n + 1, H, W) and got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-13)
        assert torch.equal(got.argmax(0), want.argmax(0))


def test_random_walk_methods_agree_in_float32():
    """The sparse products and the dense squarings, float32, a 200 x 260 image: maps to
    1e-5 relative, labels equal."""
    aff, scores, h, w = walk_inputs(200, 260, 5, 2, "threshold", seed=7, dtype=torch.float32)
    M = dense_affinity(aff, h, w, 5)
    squaring = random_walk(scores, M, method="squaring")
    exact = ref_random_walk(scores.double(), M.double(), 8, 6)
    for m, method in ((sparse_affinity(aff, h, w, 5), "auto"), (M, "sparse")):
        fast = random_walk(scores, m, method=method)
        assert fast.dtype == torch.float32
        assert float((fast.double() - exact).norm() / exact.norm()) < 1e-5
        assert float((fast - squaring).norm() / squaring.norm()) < 1e-5
        assert torch.equal(fast.argmax(0), squaring.argmax(0))


def test_random_walk_keeps_absent_classes_at_zero():
    aff, scores, h, w = walk_inputs(40, 56, 4, 2, "threshold", seed=2)
    scores = torch.cat([scores, torch.zeros(3, 40, 56, dtype=scores.dtype)])
    for m in (dense_affinity(aff, h, w, 4), sparse_affinity(aff, h, w, 4)):
        maps = random_walk(scores, m, beta=8, logt=6)
        assert (maps[3:] == 0).all() and (maps[:3] > 0).all()


def test_random_walk_half_precision_inputs_walk_in_float32():
    aff, scores, h, w = walk_inputs(48, 64, 5, 2, "power", seed=4, dtype=torch.float32)
    want = random_walk(scores, dense_affinity(aff, h, w, 5))
    for dt in (torch.bfloat16, torch.float16):
        got = random_walk(scores.to(dt), sparse_affinity(aff.to(dt), h, w, 5))
        assert got.dtype == torch.float32
        assert float((got - want).norm() / want.norm()) < 2e-2


def test_random_walk_on_a_grid_without_pairs_is_the_upsampled_seed():
    """A 2 x 3 grid has no pairs of radius 5: M = I and the walk only pools and upsamples."""
    scores = torch.rand(2, 16, 20, dtype=torch.float64)
    M = dense_affinity(torch.zeros(34, 0, dtype=torch.float64), 2, 3, 5)
    torch.testing.assert_close(M, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(random_walk(scores, M), ref_random_walk(scores, M, 8, 6))


def test_random_walk_argument_errors():
    with pytest.raises(ValueError, match="does not fit"):
        random_walk(torch.rand(2, 30, 30), torch.eye(9))
    with pytest.raises(ValueError, match="method"):
        random_walk(torch.rand(2, 24, 24), torch.eye(9), method="power")


@pytest.mark.parametrize("r,h,w", [(5, 12, 13), (2, 5, 4), (3, 7, 9), (6, 11, 12), (4, 3, 9),
                                   (5, 9, 8)])
def test_pair_affinities_slices_equal_the_pairwise_definition(r, h, w):
    """The slice-based affinities of the AffinityNet head equal PSA's pair by pair (float64),
    including grids too small for any pair (P = 0), and carry gradients."""
    g = torch.Generator().manual_seed(r * 100 + h * 10 + w)
    e = torch.rand(2, 5, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    got = pair_affinities(e, r)
    want = ref_affinities(e.detach().numpy(), r)
    assert got.shape == want.shape == (2, len(pair_offsets(r)), len(pair_indices(h, w, r)[0]))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=0)
    if got.numel():
        got.sum().backward()
        assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("h,w,r", [(7, 9, 3), (10, 12, 4), (11, 13, 5), (9, 17, 5)])
def test_pairs_match_literal(h, w, r):
    offs, froms, tos = literal_pairs(h, w, r)
    assert pair_offsets(r) == offs
    assert len(offs) == {3: 12, 4: 22, 5: 34}[r]
    i_from, i_to = pair_indices(h, w, r)
    assert i_from.dtype == i_to.dtype == torch.int64
    np.testing.assert_array_equal(i_from.numpy(), froms)
    np.testing.assert_array_equal(i_to.numpy(), tos)


def test_grids_too_small_for_the_radius_have_no_pairs():
    """As the reference's slicing gives: no pairs, so the walk's matrix is the identity."""
    for h, w in ((4, 20), (9, 8), (3, 3)):
        i_from, i_to = pair_indices(h, w, 5)
        assert i_from.numel() == i_to.numel() == 0
        M = dense_affinity(torch.zeros(34, 0), h, w, 5)
        assert torch.equal(M, torch.eye(h * w))
        scores = torch.rand(2, 8 * h, 8 * w)
        torch.testing.assert_close(random_walk(scores, sparse_affinity(torch.zeros(34, 0), h, w,
                                                                       5)),
                                   random_walk(scores, M))


@pytest.mark.parametrize("r", [3, 4, 5])
def test_affinity_labels_match_literal_batched(r):
    g = np.random.default_rng(r)
    y = g.choice([0, 1, 2, 3, 255], size=(3, 10, 12), p=[0.4, 0.2, 0.15, 0.1, 0.15])
    got = affinity_labels(torch.from_numpy(y), r)
    for b in range(3):
        want = literal_affinity_labels(y[b], r)
        for t, u in zip(got, want):
            assert t.dtype == torch.float32
            np.testing.assert_array_equal(t[b].numpy(), u)


@pytest.mark.parametrize("S,n", [(40, 1), (44, 3), (37, 2)])
def test_label_map_matches_literal(S, n):
    g = np.random.default_rng(S)
    la = g.random((n + 1, S, S)) ** 3
    ha = g.random((n + 1, S, S)) ** 3
    la[:, :9, :9] = 0                         # a block without scores -> 255
    ha[:, :9, :9] = 0
    got = affinity_label_map(torch.from_numpy(la), torch.from_numpy(ha), stride=8)
    assert got.dtype == torch.int64 and got.shape == (-(-S // 8),) * 2
    np.testing.assert_array_equal(got.numpy(), literal_label_map(la, ha))
    assert got[0, 0] == 255


def test_crop_window_fills_outside():
    x = torch.arange(2 * 5 * 7, dtype=torch.float64).reshape(2, 5, 7)
    z = crop_window(x, 6, -2, 3, fill=-1.0)
    for i in range(6):
        for j in range(6):
            r, c = i - 2, j + 3
            want = x[:, r, c] if 0 <= r < 5 and 0 <= c < 7 else torch.full((2,), -1.0,
                                                                              dtype=x.dtype)
            torch.testing.assert_close(z[:, i, j], want)
    assert crop_window(x, 3, 10, 10).abs().sum() == 0


def test_affinity_loss_terms():
    g = torch.Generator().manual_seed(0)
    aff = torch.rand(2, 10, 30, generator=g, dtype=torch.float64)
    bg, fg, neg = ((torch.rand(2, 10, 30, generator=g) > q).double() for q in (0.7, 0.8, 0.6))
    L = affinity_loss(aff, bg, fg, neg)
    want_bg = (-(bg * torch.log(aff + 1e-5))).sum() / (bg.sum() + 1e-5)
    want_neg = (-(neg * torch.log(1 + 1e-5 - aff))).sum() / (neg.sum() + 1e-5)
    torch.testing.assert_close(L["bg"], want_bg)
    torch.testing.assert_close(L["neg"], want_neg)
    torch.testing.assert_close(L["total"], L["bg"] / 4 + L["fg"] / 4 + L["neg"] / 2)


# --------------------------------------------------------------------------- the walk
@pytest.mark.parametrize("H,W,r,beta,logt,c,mode", [
    (45, 93, 5, 8, 6, 3, "threshold"), (40, 70, 4, 4, 3, 2, "power"),
    (33, 77, 5, 2, 4, 1, "power"), (50, 50, 4, 8, 8, 4, "threshold")])
def test_random_walk_matches_literal(H, W, r, beta, logt, c, mode):
    g = torch.Generator().manual_seed(H)
    h, w = -(-H // 8), -(-W // 8)
    K, P = len(pair_offsets(r)), (h - r + 1) * (w - 2 * r + 2)
    aff = torch.rand(K, P, generator=g, dtype=torch.float64)
    cams = torch.rand(c - 1, H, W, generator=g, dtype=torch.float64) ** 2
    bg = rw_background(cams, mode=mode, threshold=0.35, alpha=16)
    if mode == "power":
        want_bg = (1 - cams.amax(0)) ** 16 if c > 1 else torch.ones(H, W, dtype=cams.dtype)
    else:
        want_bg = torch.full((H, W), 0.35, dtype=cams.dtype)
    torch.testing.assert_close(bg, want_bg)
    scores = torch.cat([bg[None], cams])
    want = literal_random_walk(scores.numpy(), aff.numpy(), r, beta, logt)
    M = dense_affinity(aff, h, w, r)
    Ms = sparse_affinity(aff[None], h, w, r)
    torch.testing.assert_close(Ms.to_dense(), M)
    dense = random_walk(scores, M, beta=beta, logt=logt)
    sparse = random_walk(scores, Ms, beta=beta, logt=logt)
    assert dense.shape == (c, H, W)
    np.testing.assert_allclose(dense.numpy(), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sparse.numpy(), want, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(sparse.argmax(0).numpy(), want.argmax(0))


def test_sparse_walk_in_float32_agrees_with_squaring():
    g = torch.Generator().manual_seed(5)
    H, W, r = 120, 150, 5
    h, w = 15, 19
    aff = torch.rand(1, len(pair_offsets(r)), (h - 4) * (w - 8), generator=g)
    scores = torch.rand(3, H, W, generator=g)
    dense = random_walk(scores, dense_affinity(aff, h, w, r))
    sparse = random_walk(scores.half(), sparse_affinity(aff, h, w, r).half())
    assert sparse.dtype == torch.float32
    assert float((sparse - dense).norm() / dense.norm()) < 1e-3   # half-precision inputs
    full = random_walk(scores, sparse_affinity(aff, h, w, r))
    assert float((full - dense).norm() / dense.norm()) < 1e-5
    assert torch.equal(full.argmax(0), dense.argmax(0))


def test_walk_rejects_a_matrix_of_another_size():
    with pytest.raises(ValueError, match="does not fit"):
        random_walk(torch.rand(2, 30, 30), torch.eye(10))
