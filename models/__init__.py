"""The PCSS network and objective: ``build_model``, ``init_from_deit``, ``pcss_losses``.

The names below are imported on first use, so that ``import models.registry`` (the
backbone and width names the parsers offer) does not import torch.
"""

_HOMES = {"ARCHS": "models.registry", "MCTViT": "models.mct_vit",
          "build_arch": "models.mct_vit", "build_model": "models.mct_vit",
          "compile_network": "models.compile", "deit_to_mct": "models.weights",
          "init_from_deit": "models.weights", "load_model_weights": "models.weights",
          "load_state_dict_file": "models.weights", "PCSSConfig": "models.pcss",
          "PCSSObjective": "models.pcss", "pcss_losses": "models.pcss"}
__all__ = list(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        import importlib
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
