"""The inference loader (``datasets.loader``): single items in order, no more workers than
images."""
import torch

from datasets.loader import image_loader


def test_image_loader_yields_single_items_in_order_with_few_workers():
    items = [(torch.zeros(3, h, 5), torch.ones(2), f"id{h}") for h in (4, 6, 8, 10)]
    loader = image_loader(items, [3, 1], num_workers=8, device=torch.device("cpu"))
    assert loader.num_workers == 2                           # no more workers than images
    assert [(img.shape[1], i) for img, _, i in loader] == [(10, "id10"), (6, "id6")]
    assert image_loader(items, [], 4, torch.device("cpu")).num_workers == 0
