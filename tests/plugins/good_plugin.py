"""An example plugin: the squared ReLU activation of Primer.

So et al. 2021, "Primer: Searching for Efficient Transformers for Language Modeling",
arXiv 2109.08668: FFN(x) = relu(x W1)^2 W2. Registered with the public decorators only, as an
outside plugin would (``modtransfer check squared_relu --plugin tests/plugins/good_plugin.py``).
Other tests rely on the names: component ``activation/squared_relu``, variant ``squared_relu``.
"""

from __future__ import annotations

import torch

from modtransfer import ModelSpec, register_component, register_variant


@register_component("activation", "squared_relu", paper="So et al. 2021, arXiv 2109.08668")
def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2."""
    return torch.relu(x).square()


@register_variant("squared_relu", slot="activation", paper="So et al. 2021, arXiv 2109.08668")
def squared_relu_variant(spec: ModelSpec) -> ModelSpec:
    """FFN activation relu(x)^2 instead of ReLU (Primer)."""
    return spec.replace(activation="squared_relu")
