"""The project's Hydra sweeper, where Hydra looks for plugins (`hydra_plugins`): the code is
`sae_merging.runtime.sweep`."""

from sae_merging.runtime.sweep import CheckedSweeper as _Checked


class CheckedSweeper(_Checked):
    """`sae_merging.runtime.sweep.CheckedSweeper` (Hydra instantiates plugins only from here)."""
