"""Activation functions of the FFN (Narang et al. 2021, Table 1, "activations" rows).

Each activation is a component of the ``activation`` slot and a variant that selects it.
The baseline is ReLU (Vaswani et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modtransfer.core.components import register_component
from modtransfer.core.variant import selector


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GeLU's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Hendrycks & Gimpel 2016, section 2; the form GPT-2's code uses (openai/gpt-2, src/model.py,
    ``gelu``), and the ``gpt2`` implementation profile's activation.
    """
    return F.gelu(x, approximate="tanh")


register_component("activation", "gelu", paper="Hendrycks & Gimpel 2016, arXiv 1606.08415")(F.gelu)
register_component("activation", "swish", paper="Ramachandran et al. 2017, arXiv 1710.05941")(F.silu)
register_component("activation", "elu", paper="Clevert et al. 2016, arXiv 1511.07289")(F.elu)
register_component("activation", "selu", paper="Klambauer et al. 2017, arXiv 1706.02515")(F.selu)
register_component("activation", "sigmoid")(torch.sigmoid)
register_component("activation", "softplus")(F.softplus)
register_component("activation", "linear")(_identity)
register_component("activation", "gelu_tanh", paper="Hendrycks & Gimpel 2016, arXiv 1606.08415; Radford et al. 2019")(
    gelu_tanh)


_NARANG = "Narang et al. 2021, arXiv 2102.11972"

selector("gelu", slot="activation", paper="Hendrycks & Gimpel 2016, arXiv 1606.08415",
         description="FFN activation GeLU(x) = x * Phi(x) instead of ReLU.", activation="gelu")
selector("swish", slot="activation", paper="Ramachandran et al. 2017, arXiv 1710.05941",
         description="FFN activation Swish(x) = x * sigmoid(x) instead of ReLU.", activation="swish")
selector("elu", slot="activation", paper="Clevert et al. 2016, arXiv 1511.07289",
         description="FFN activation ELU(x) = x if x > 0 else exp(x) - 1 instead of ReLU.", activation="elu")
selector("selu", slot="activation", paper="Klambauer et al. 2017, arXiv 1706.02515",
         description="FFN activation SeLU(x) = lambda * ELU_alpha(x) instead of ReLU.", activation="selu")
selector("sigmoid", slot="activation", paper=_NARANG,
         description="FFN activation sigmoid(x) instead of ReLU.", activation="sigmoid")
selector("softplus", slot="activation", paper=_NARANG,
         description="FFN activation softplus(x) = log(1 + exp(x)) instead of ReLU.", activation="softplus")
