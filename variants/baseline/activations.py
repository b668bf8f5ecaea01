"""The baseline's activation: ReLU, max(0, x) (Nair & Hinton 2010), the FFN nonlinearity of
Vaswani et al. 2017 (eq. 2). The alternatives are modifications, in :mod:`modtransfer.variants.activations`.
"""

from __future__ import annotations

import torch.nn.functional as F

from modtransfer.core.components import register_component

register_component("activation", "relu", paper="Nair & Hinton 2010")(F.relu)
