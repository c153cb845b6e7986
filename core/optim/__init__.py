"""Optimizers shaped like torch.optim: param groups, state_dict/load_state_dict, closure."""
from core.optim.accum import AccumAdam, AccumSGDM

__all__ = ["AccumAdam", "AccumSGDM"]
