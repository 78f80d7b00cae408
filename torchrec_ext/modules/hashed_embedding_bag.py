"""Kept for existing imports: the hashed tables live in `torchrec_ext.modules.hashed`."""

from torchrec_ext.modules.hashed import *  # noqa: F401,F403
from torchrec_ext.modules.hashed import __all__  # noqa: F401
