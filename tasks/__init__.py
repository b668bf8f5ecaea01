"""The task registry's built-in tasks: regression (toy), lm (Shakespeare), mt (Bible en->fr).

Importing this package registers them; heavy dependencies (tokenizers, sacrebleu, datasets,
torchmetrics) are imported only when a task prepares data or evaluates.
"""

from . import heldout, lm, mt, regression

__all__ = ["heldout", "lm", "mt", "regression"]
