"""Optimizers shaped like torch.optim: param groups, state_dict/load_state_dict, closure."""

from core.optim.accum import AccumAdam, AccumSGDM
from core.optim.eg import EGFunnel, EGStepSize, HypergradientSGD, eg_step_

__all__ = ["AccumAdam", "AccumSGDM", "EGFunnel", "EGStepSize", "HypergradientSGD", "eg_step_"]
