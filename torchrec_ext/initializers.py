"""`torchrec_ext.initializers`: a short path to `torchrec_ext.modules.dynamic.initializers`."""

from torchrec_ext.modules.dynamic.initializers import *  # noqa: F401,F403
