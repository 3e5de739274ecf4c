# SPDX-License-Identifier: GPL-2.0-only
"""CLI layer: one module per subcommand (``add_arguments``, ``run``)."""
