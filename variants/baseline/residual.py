"""The baseline's residual connection, pre-LN (Xiong et al. 2020, arXiv 2002.04745):
x + F(norm(x)), each stack ending with a final norm; and the base class of residual modifications.

:class:`ResidualBase` (exported as ``modtransfer.ResidualBase``) builds the norm, keeps the
sublayer and the residual dropout, passes masks and positions on, and leaves
:meth:`~ResidualBase.combine` (how the branch joins the stream) to override. :func:`branch_weights`
and :func:`output_layers` name a branch's matrices by role, for init schemes and for residual
schemes with their own init. Post-LN (the ``torch`` implementation profile's placement), ReZero,
Fixup, Sandwich-LN and DeepNorm are modifications, in :mod:`modtransfer.variants.residual`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec

NormFactory = Callable[..., nn.Module]


def branch_weights(sublayer: nn.Module) -> dict[str, list[Tensor]]:
    """A residual branch's weight matrices by role (views sharing storage with the parameters).

    ``score``: shape the attention pattern only (W_q, W_k); ``input``: on the signal path before
    the last layer (W_v, FFN W1); ``output``: the last layer of the branch (W_o, FFN W2).
    A sublayer may say so itself with a ``branch_weights()`` method (attention does); otherwise
    the last ``nn.Linear`` registered, and every Linear with the same attribute name (the experts
    of a mixture), are the output, a Linear named ``router`` scores, and all others are input.
    """
    own = getattr(sublayer, "branch_weights", None)
    if callable(own):
        roles = own()
        return {"score": list(roles.get("score", [])), "input": list(roles.get("input", [])),
                "output": list(roles.get("output", []))}
    roles: dict[str, list[Tensor]] = {"score": [], "input": [], "output": []}
    for role, m in _linear_roles(sublayer):
        roles[role].append(m.weight.detach())
    return roles


def _linear_roles(sublayer: nn.Module) -> list[tuple[str, nn.Linear]]:
    linears = [(name, m) for name, m in sublayer.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return []
    last = linears[-1][0].rsplit(".", 1)[-1]
    roles = []
    for name, m in linears:
        leaf = name.rsplit(".", 1)[-1]
        roles.append(("output" if leaf == last else "score" if leaf == "router" else "input", m))
    return roles


def output_layers(sublayer: nn.Module) -> list[nn.Module]:
    """The modules computing a branch's output (``sublayer.output_layers()``, else as above)."""
    own = getattr(sublayer, "output_layers", None)
    if callable(own):
        return list(own())
    return [m for role, m in _linear_roles(sublayer) if role == "output"]


class ResidualBase(nn.Module):
    """A residual connection around one sublayer: combine(x, drop(F(norm(x)))), pre-norm by default.

    The slot's duties are done here: ``norm`` is built with the spec's width and eps,
    ``sublayer`` (attention or FFN) is called with every keyword the block passes (padding
    mask, position bias, encoder memory), ``drop`` is the residual dropout, and ``index`` /
    ``n_sublayers`` say where the sublayer sits in its stack (for depth-scaled inits). A
    subclass overrides :meth:`combine` (e.g. x + lambda * branch), or :meth:`branch` to move
    the norm, and sets ``final_norm = False`` when its stack must not end with a norm. An
    own initialisation belongs in ``reset_special(topology, stack)``, which runs after the
    model's init scheme.
    """

    final_norm = True

    def __init__(self, spec: ModelSpec, sublayer: nn.Module, norm: NormFactory,
                 index: int = 0, n_sublayers: int = 1) -> None:
        super().__init__()
        self.norm = norm(spec.d_model, spec.norm_eps)
        self.sublayer = sublayer
        self.drop = nn.Dropout(spec.dropout_for("residual"))
        self.index, self.n_sublayers = index, n_sublayers

    def branch(self, x: Tensor, **kw: Any) -> Tensor:
        """The branch's contribution before it joins the stream: drop(F(norm(x)))."""
        return self.drop(self.sublayer(self.norm(x), **kw))

    def combine(self, x: Tensor, branch: Tensor) -> Tensor:
        """How the branch joins the residual stream: x + branch."""
        return x + branch

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return self.combine(x, self.branch(x, **kw))


@register_component("residual", "pre", paper="Xiong et al. 2020, arXiv 2002.04745")
class PreNorm(ResidualBase):
    """x + F(norm(x))."""

    def forward(self, x: Tensor, **kw: Any) -> Tensor:
        return x + self.drop(self.sublayer(self.norm(x), **kw))
