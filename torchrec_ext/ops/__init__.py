"""torchrec_ext's native ops: schemas in csrc/ops.cpp, kernels in csrc/cpu and csrc/cuda."""

from torchrec_ext.ops.dynamic import dynamic_bag, dynamic_bags, dynamic_bags_backward, dynamic_bags_sgd_, key_hash  # noqa: F401,E501
from torchrec_ext.ops.hashed import (  # noqa: F401
    HashedShardLayout,
    coord_uniform_,
    hashed_bag,
    hashed_bag_sgd_,
    hashed_bags,
    hashed_bags_backward,
    hashed_bags_keep,
    hashed_bags_sgd_,
)
from torchrec_ext.ops.qr import QRShardLayout, qr_bag, qr_bag_backward, qr_bags, qr_bags_backward  # noqa: F401
