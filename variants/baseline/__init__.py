"""The baseline's own parts: the components the reference ``ModelSpec`` uses by default, and the base
classes the modifications in ``variants/`` extend. One module per slot family, named as in ``variants/``.

The baseline is the ``modtransfer`` implementation profile (:mod:`modtransfer.core.profiles`), which
leaves the ``ModelSpec`` defaults as they are: ReLU activation (Nair & Hinton 2010), dense FFN and
sinusoidal positions (Vaswani et al. 2017, arXiv 1706.03762), LayerNorm (Ba et al. 2016, arXiv
1607.06450) in pre-LN placement (Xiong et al. 2020, arXiv 2002.04745), scaled dot-product attention,
one tied embedding (Press & Wolf 2017, arXiv 1608.05859), full softmax, no sharing, PyTorch's default
init. The other profiles' choices (post-LN and untied embeddings for ``torch``, RMSNorm and relative
bias for ``t5``, learned positions and tanh-GeLU for ``gpt2``, their init schemes) are modifications
of this baseline and stay in ``variants/``, where each is also a variant of its own.

Importing the package imports every module below, so the baseline's components register before any
modification's (the registries list in registration order; ``none`` comes first for positions).
"""

from modtransfer.variants.baseline import (  # noqa: F401  (importing registers the components)
    activations,
    attention,
    embeddings,
    ffn,
    init,
    norms,
    output,
    position,
    residual,
    sharing,
)
