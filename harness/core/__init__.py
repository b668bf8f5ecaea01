"""The model core: spec, slots and their Protocols, registries, variants, tasks, implementations, the model
builder, accounting, schedules and sizes. Imports nothing from the layers above it (see the README's
Architecture section)."""

__version__ = "0.1.0"
