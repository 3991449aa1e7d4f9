"""The PCSS network and objective: ``build_model``, ``init_from_deit``, ``pcss_losses``."""
from models.weights import (deit_to_mct, init_from_deit, load_model_weights,
                            load_state_dict_file)
from models.compile import compile_network
from models.mct_vit import ARCHS, MCTViT, build_arch, build_model
from models.pcss import PCSSConfig, pcss_losses

__all__ = ["ARCHS", "MCTViT", "build_arch", "build_model", "compile_network", "deit_to_mct",
           "init_from_deit", "load_model_weights", "load_state_dict_file", "PCSSConfig",
           "pcss_losses"]
