# SPDX-License-Identifier: GPL-2.0-only
from .cli import entry_point

entry_point()
