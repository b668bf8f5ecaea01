"""modtransfer: does this Transformer modification's gain transfer across tasks?

Public API for plugin authors::

    from modtransfer import ModelSpec, register_variant, register_component
"""

from .components import COMPONENTS, register_component
from .errors import UserError
from .implementations import IMPLEMENTATIONS, apply_implementation, implementation_conflict, register_implementation
from .spec import SLOTS, ModelSpec
from .task import TASKS, Budget, Task, register_task
from .variant import VARIANTS, register_variant

__version__ = "0.1.0"
__all__ = [
    "COMPONENTS", "IMPLEMENTATIONS", "SLOTS", "TASKS", "VARIANTS", "Budget", "ModelSpec", "Task", "UserError",
    "apply_implementation", "implementation_conflict", "register_component", "register_implementation", "register_task",
    "register_variant",
]
