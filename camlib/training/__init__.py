"""Training with class activation maps: the maps as a differentiable training signal.

:class:`GAIN` (Li et al., "Tell Me Where to Look: Guided Attention Inference
Network", CVPR 2018) wraps a classifier so that each step also trains its
Grad-CAM maps: to cover the whole object (attention mining) and, where pixel
masks are given, to match them (GAIN_ext).

Example:
    >>> from camlib.training import GAIN, GAINOutput, soft_mask
    >>> GAINOutput._fields
    ('loss', 'logits', 'maps', 'loss_cl', 'loss_am', 'loss_e')
"""

from camlib.training.gain import GAIN, GAINOutput, erase, soft_mask

__all__ = ["GAIN", "GAINOutput", "erase", "soft_mask"]
