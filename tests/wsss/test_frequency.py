"""FFT operations and the frequency influence map (``wsss.frequency``) against literal
restatements (bench/reference.py; other configurations than the fixtures')."""
import pytest
import torch

from bench.reference import LiteralFIM
from models import build_model
from wsss.frequency import FrequencyInfluence, influence_cells, suppress_frequencies


@pytest.mark.parametrize("S,C,n,cells_per_forward", [(64, 3, 2, 1), (80, 4, 3, 7)])
def test_fim_matches_literal(S, C, n, cells_per_forward):
    torch.manual_seed(0)
    net = build_model(num_classes=C, img_size=S, embed_dim=16, depth=2, num_heads=2,
                      drop_path_rate=0).double().eval()
    batches = [(torch.randn(4, 3, S, S, dtype=torch.float64),
                (torch.rand(4, C) > 0.5).double()) for _ in range(4)]
    fi = FrequencyInfluence(C, S, images_per_class=n, cells_per_forward=cells_per_forward)
    ref = LiteralFIM(C, S, n)
    with torch.no_grad():
        for _ in range(2):
            fi.start_round()
            for x, y in batches:
                if fi.accumulate(net, x, y):
                    break
            masks = fi.finish_round()
            total, want = ref.round(net, batches)
            torch.testing.assert_close(fi.loss_matrix, total, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(masks, want, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(fi.max_loss, ref.max_loss, rtol=1e-10, atol=1e-12)
            net.head.weight.data.mul_(1.3)  # next round sees other losses


def test_fim_sharded_rounds_equal_single_process():
    torch.manual_seed(1)
    net = build_model(num_classes=3, img_size=64, embed_dim=16, depth=1, num_heads=2,
                      drop_path_rate=0).double().eval()
    x, y = torch.randn(5, 3, 64, 64, dtype=torch.float64), (torch.rand(5, 3) > 0.4).double()
    one = FrequencyInfluence(3, 64, images_per_class=2)
    one.start_round()
    with torch.no_grad():
        one.accumulate(net, x, y)
    shares = []
    for rank in range(3):
        part = FrequencyInfluence(3, 64, images_per_class=2, shard=(rank, 3),
                                  reduce=lambda t, rank=rank: shares.append(t) or t)
        part.start_round()
        with torch.no_grad():
            part.accumulate(net, x, y)
    total = shares[0] + shares[1] + shares[2]
    G = 4
    writer = one.writer
    got = torch.zeros(3, G * G, dtype=torch.float64)
    got[:, writer >= 0] = total[:, writer[writer >= 0]]
    torch.testing.assert_close(got.reshape(3, G, G), one.loss_matrix)


def test_fim_skips_images_no_budget_needs():
    calls = []

    class Net(torch.nn.Module):
        def logits(self, x):
            calls.append(x.shape[0])
            return torch.zeros(x.shape[0], 2), torch.zeros(x.shape[0], 2)

    fi = FrequencyInfluence(2, 32, images_per_class=1, cells_per_forward=100)
    fi.start_round()
    y = torch.tensor([[1.0, 0], [1, 0], [0, 0], [1, 1]])
    assert fi.accumulate(Net(), torch.randn(4, 3, 32, 32), y)
    n_cells = len(influence_cells(2))
    assert calls == [2 * n_cells]  # image 0 (class 0) and image 3 (class 1) only


def test_cells_and_partners():
    cells = influence_cells(4)
    assert [c for c, _ in cells][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert dict(cells)[(0, 1)] == (0, 3) and dict(cells)[(2, 1)] == (2, 3)
    assert dict(cells)[(3, 0)] is None and len(cells) == 12


def test_suppress_frequencies_zero_masks_and_unlabelled():
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([[1.0, 0], [0, 0], [1, 1]])
    out, valid = suppress_frequencies(x, y, torch.zeros(2, 32, 32, dtype=torch.float64))
    torch.testing.assert_close(out, x)
    assert valid.tolist() == [1.0, 0.0, 1.0]
    out, _ = suppress_frequencies(x, y, torch.ones(2, 32, 32, dtype=torch.float64))
    assert out[0].abs().max() < 1e-12 and torch.equal(out[1], x[1])


def test_suppress_frequencies_float32_and_bf16_autocast():
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([[1.0, 1], [0, 1]])
    m = torch.rand(2, 32, 32)
    ref, _ = suppress_frequencies(x.double(), y.double(), m.double())
    out, _ = suppress_frequencies(x, y, m)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out2, _ = suppress_frequencies(x, y, m)
    torch.testing.assert_close(out2.double(), ref, rtol=1e-5, atol=1e-5)
