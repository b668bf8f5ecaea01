"""check layer of modtransfer (see the README's Architecture section)."""
