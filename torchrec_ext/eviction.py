"""`torchrec_ext.eviction`: a short path to `torchrec_ext.modules.dynamic.eviction`."""

from torchrec_ext.modules.dynamic.eviction import *  # noqa: F401,F403
