"""Activation functions of the FFN (Narang et al. 2021, Table 1, "activations" rows).

Each activation is a component of the ``activation`` slot and a variant that selects it.
The baseline is ReLU (Vaswani et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import register_variant


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


def _activation_variant(name: str, paper: str, equation: str) -> None:
    def patch(spec: ModelSpec) -> ModelSpec:
        return spec.replace(activation=name)

    patch.__name__ = patch.__qualname__ = f"{name}_activation"
    patch.__doc__ = f"FFN activation {equation} instead of ReLU."
    register_variant(name, slot="activation", paper=paper)(patch)


_activation_variant("gelu", "Hendrycks & Gimpel 2016, arXiv 1606.08415", "GeLU(x) = x * Phi(x)")
_activation_variant("swish", "Ramachandran et al. 2017, arXiv 1710.05941", "Swish(x) = x * sigmoid(x)")
_activation_variant("elu", "Clevert et al. 2016, arXiv 1511.07289", "ELU(x) = x if x > 0 else exp(x) - 1")
_activation_variant("selu", "Klambauer et al. 2017, arXiv 1706.02515", "SeLU(x) = lambda * ELU_alpha(x)")
_activation_variant("sigmoid", "Narang et al. 2021, arXiv 2102.11972", "sigmoid(x)")
_activation_variant("softplus", "Narang et al. 2021, arXiv 2102.11972", "softplus(x) = log(1 + exp(x))")
