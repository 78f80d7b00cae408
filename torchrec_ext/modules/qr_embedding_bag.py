"""Kept for existing imports: the QR tables live in `torchrec_ext.modules.qr`."""

from torchrec_ext.modules.qr import *  # noqa: F401,F403
from torchrec_ext.modules.qr import __all__  # noqa: F401
