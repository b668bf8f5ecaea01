"""A test split read the way a task reads its validation split."""

from __future__ import annotations

from typing import Any, ClassVar


class TestSplitFromVal:
    """Mixin for a task whose ``val_batches(seed, batch_size, limit, split=...)`` can read its ``"test"`` split.

    lm (Shakespeare: four works held out from training and validation) and mt (the Bible: four books
    held out likewise) keep a test split that neither training nor validation reads; the tuning regime
    selects on validation and scores on it.
    """

    has_test_split: ClassVar[bool] = True

    def test_batches(self, seed: int, batch_size: int, limit: int) -> Any:
        """The test split's batches, drawn exactly as :meth:`val_batches` draws the validation ones."""
        return self.val_batches(seed, batch_size, limit, split="test")  # type: ignore[attr-defined]
