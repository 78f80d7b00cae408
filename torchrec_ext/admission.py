"""`torchrec_ext.admission`: a short path to `torchrec_ext.modules.dynamic.admission`."""

from torchrec_ext.modules.dynamic.admission import *  # noqa: F401,F403
